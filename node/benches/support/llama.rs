//! llama.cpp's own tools as the benches' anchors (built by
//! `scripts/llama-tools.sh`, cached outside the repository), and the one
//! HTTP load generator that drives both `llama-server` and the router's
//! OpenAI-compatible API.
// Each bench uses its own part of this.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `LLAMA_TOOLS`: where llama-bench and llama-server are.
pub fn tools() -> PathBuf {
    PathBuf::from(
        std::env::var_os("LLAMA_TOOLS")
            .expect("set LLAMA_TOOLS to llama.cpp's tools (scripts/llama-tools.sh prints it)"),
    )
}

/// llama-server on a free loopback port, started and waited for; killed
/// when dropped.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Server {
    /// `slots` parallel sequences of `ctx_per_slot` tokens each.
    pub fn start(
        tools: &Path,
        model: &Path,
        threads: u32,
        slots: usize,
        ctx_per_slot: u32,
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(tools.join("llama-server"))
            .args(["-m", &model.display().to_string()])
            .args(["-t", &threads.to_string(), "-tb", &threads.to_string()])
            .args(["-np", &slots.to_string()])
            .args(["-c", &(ctx_per_slot * slots as u32).to_string()])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("llama-server starts");
        let s = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let end = Instant::now() + Duration::from_secs(120);
        while http(s.addr, "GET", "/health", None, None).is_none_or(|r| !r.body.contains("ok")) {
            assert!(Instant::now() < end, "llama-server did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// llama-bench's tg figure (tokens/s) for `tokens` tokens.
pub fn llama_bench(tools: &Path, model: &Path, threads: u32, tokens: u32) -> f64 {
    let out = Command::new(tools.join("llama-bench"))
        .args(["-m", &model.display().to_string()])
        .args([
            "-t",
            &threads.to_string(),
            "-p",
            "0",
            "-n",
            &tokens.to_string(),
        ])
        .args(["-r", "3", "-o", "json"])
        .stderr(Stdio::null())
        .output()
        .expect("llama-bench runs");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("llama-bench JSON");
    v[0]["avg_ts"].as_f64().expect("avg_ts")
}

/// An HTTP answer.
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: String,
    /// When the first body bytes holding generated text arrived (streamed
    /// answers), from the request's start.
    pub first_text: Option<Duration>,
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read
/// to the end. `None` when the connection fails.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    json: Option<&str>,
) -> Option<Response> {
    let started = Instant::now();
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_nodelay(true).ok()?;
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let body = json.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    c.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut first_text = None;
    loop {
        let n = c.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        // The first streamed chunk with text: `"text":"` or `"content":"`
        // followed by something other than the closing quote.
        if first_text.is_none() && has_text(&raw) {
            first_text = Some(started.elapsed());
        }
    }
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = raw.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Some(Response {
        status,
        body,
        first_text,
    })
}

fn has_text(raw: &[u8]) -> bool {
    [&b"\"text\":\""[..], &b"\"content\":\""[..]]
        .iter()
        .any(|pat| {
            raw.windows(pat.len())
                .enumerate()
                .any(|(i, w)| w == *pat && raw.get(i + pat.len()).is_some_and(|&b| b != b'"'))
        })
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// A completion of `prompt` on `/v1/completions` (greedy, `max_tokens`):
/// the tokens it generated, by the answer's `usage`.
pub fn complete(addr: SocketAddr, key: Option<&str>, prompt: &str, max_tokens: u32) -> u64 {
    let body = serde_json::json!({
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
    })
    .to_string();
    let r = http(addr, "POST", "/v1/completions", key, Some(&body)).expect("the server answers");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(r.body.trim()).expect("a JSON answer");
    v["usage"]["completion_tokens"]
        .as_u64()
        .expect("usage.completion_tokens")
}

/// The time to the first generated text of a streamed completion.
pub fn time_to_first_token(
    addr: SocketAddr,
    key: Option<&str>,
    prompt: &str,
    max_tokens: u32,
) -> Duration {
    let body = serde_json::json!({
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": true,
    })
    .to_string();
    let r = http(addr, "POST", "/v1/completions", key, Some(&body)).expect("the server answers");
    assert_eq!(r.status, 200, "{}", r.body);
    r.first_text.expect("the stream carried text")
}

/// `n` completions at once, each on its own thread; the tokens they
/// generated in all and the wall time.
pub fn concurrent(
    addr: SocketAddr,
    key: Option<&str>,
    prompts: &[String],
    max_tokens: u32,
) -> (u64, f64) {
    let started = Instant::now();
    let threads: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (p, key) = (p.clone(), key.map(str::to_owned));
            std::thread::spawn(move || complete(addr, key.as_deref(), &p, max_tokens))
        })
        .collect();
    let total = threads.into_iter().map(|t| t.join().unwrap()).sum();
    (total, started.elapsed().as_secs_f64())
}
