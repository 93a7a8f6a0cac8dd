//! Turning generated token bytes into text as it streams: whole UTF-8
//! characters only, stop strings cut out, and text that could still become a
//! stop string held back until it cannot.

use cactus_protocol::messages::{MAX_OUTPUT_BYTES, truncate_utf8};

/// The text of one generation, built token by token.
#[derive(Debug, Default)]
pub struct Output {
    bytes: Vec<u8>,
    /// Bytes already handed out as text.
    emitted: usize,
    stops: Vec<Vec<u8>>,
    /// Where a stop string begins, once one has been produced.
    stopped_at: Option<usize>,
    /// Where this generation's text begins: after the text an earlier
    /// generation already showed, when this one resumes it.
    base: usize,
}

/// What one token did to the text.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    /// New text safe to show (may be empty).
    pub text: String,
    /// A stop string is complete: generation ends here.
    pub stopped: bool,
    /// The text reached [`MAX_OUTPUT_BYTES`].
    pub full: bool,
}

impl Output {
    /// Output that stops before any of `stops`.
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| s.as_bytes().to_vec())
                .collect(),
            ..Self::default()
        }
    }

    /// Output that continues another generation: `before` is the bytes of
    /// its tokens, of which `shown` (a prefix) was handed out already. The
    /// rest is this output's to hand out, and its text begins there. `None`
    /// when `shown` is not a prefix of `before`.
    pub fn resumed(stops: &[String], before: Vec<u8>, shown: &str) -> Option<Self> {
        if !before.starts_with(shown.as_bytes()) {
            return None;
        }
        Some(Self {
            bytes: before,
            emitted: shown.len(),
            base: shown.len(),
            ..Self::new(stops)
        })
    }

    /// Adds one token's bytes.
    pub fn push(&mut self, piece: &[u8]) -> Step {
        if self.stopped_at.is_some() {
            return Step {
                text: String::new(),
                stopped: true,
                full: false,
            };
        }
        let searched_from = self.emitted;
        self.bytes.extend_from_slice(piece);
        // A stop string can only complete in what was not handed out yet:
        // held-back text is exactly the part that could still begin one.
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| find(&self.bytes[searched_from..], s).map(|i| searched_from + i))
            .min()
        {
            self.stopped_at = Some(at);
            let text = self.take(at);
            return Step {
                text,
                stopped: true,
                full: false,
            };
        }
        let full = self.bytes.len() >= MAX_OUTPUT_BYTES;
        // Hold back a tail that is the beginning of a stop string, and an
        // unfinished UTF-8 character.
        let mut end = self.bytes.len() - self.partial_stop_len();
        if !full {
            end = complete_utf8(&self.bytes[..end]).max(self.emitted);
        }
        let text = self.take(end);
        Step {
            text,
            stopped: false,
            full,
        }
    }

    /// The whole text: up to the stop string when one was produced, capped
    /// at [`MAX_OUTPUT_BYTES`]. What [`Self::push`] handed out is a prefix of
    /// it.
    pub fn finish(&self) -> String {
        let end = self.stopped_at.unwrap_or(self.bytes.len());
        let mut text =
            String::from_utf8_lossy(&self.bytes[self.base..end.max(self.base)]).into_owned();
        truncate_utf8(&mut text, MAX_OUTPUT_BYTES);
        text
    }

    /// Whether a stop string ended the text.
    pub fn stopped(&self) -> bool {
        self.stopped_at.is_some()
    }

    fn take(&mut self, end: usize) -> String {
        let end = end.max(self.emitted);
        let text = String::from_utf8_lossy(&self.bytes[self.emitted..end]).into_owned();
        self.emitted = end;
        text
    }

    /// Length of the longest tail of the text that begins some stop string.
    fn partial_stop_len(&self) -> usize {
        let tail = &self.bytes[self.emitted..];
        self.stops
            .iter()
            .map(|s| {
                (1..s.len().min(tail.len() + 1))
                    .rev()
                    .find(|&n| tail.ends_with(&s[..n]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

/// Where the text `decoded` (the tokens' bytes) should end under `stops`:
/// before the first stop string, or `None` when there is none. A verifier
/// uses it to check a result that ended on a stop string.
pub fn stop_position(decoded: &[u8], stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| find(decoded, s.as_bytes()))
        .min()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Length of the longest prefix of `b` that does not end inside a UTF-8
/// character (invalid bytes count as whole: they are shown replaced).
fn complete_utf8(b: &[u8]) -> usize {
    match std::str::from_utf8(b) {
        Ok(_) => b.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => {
            // An invalid byte in the middle: only an unfinished character
            // at the very end is held back.
            let start = b.len().saturating_sub(3);
            (start..b.len())
                .find(|&i| {
                    let c = b[i];
                    let need = match c {
                        0xC0..=0xDF => 2,
                        0xE0..=0xEF => 3,
                        0xF0..=0xF7 => 4,
                        _ => return false,
                    };
                    i + need > b.len()
                })
                .unwrap_or(b.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&[u8]]) -> (Vec<String>, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| (*s).to_owned()).collect();
        let mut o = Output::new(&stops);
        let mut shown = Vec::new();
        for p in pieces {
            let s = o.push(p);
            shown.push(s.text);
            if s.stopped {
                break;
            }
        }
        (shown, o.finish(), o.stopped())
    }

    #[test]
    fn shown_text_is_always_a_prefix_of_the_final_text() {
        let (shown, text, stopped) = run(&["\n\n"], &[b"Hello", b" world", b"\n", b"\nmore"]);
        assert_eq!(shown, vec!["Hello", " world", "", ""]);
        assert_eq!(text, "Hello world");
        assert!(stopped);
    }

    #[test]
    fn a_held_back_tail_is_released_when_it_cannot_be_a_stop() {
        let (shown, text, stopped) = run(&["END"], &[b"the E", b"N", b"d of it"]);
        assert_eq!(shown, vec!["the ", "", "ENd of it"]);
        assert_eq!(text, "the ENd of it");
        assert!(!stopped);
    }

    #[test]
    fn a_resumed_output_shows_what_its_predecessor_held_back_and_no_more() {
        let stops = vec!["END".to_owned()];
        // The first generation showed "the " and held back "E" (a possible
        // stop); the second continues from its tokens' bytes.
        assert!(Output::resumed(&stops, b"the E".to_vec(), "then").is_none());
        let mut o = Output::resumed(&stops, b"the E".to_vec(), "the ").unwrap();
        assert_eq!(o.push(b"N").text, "");
        assert_eq!(o.push(b"d").text, "ENd");
        assert_eq!(o.finish(), "ENd");
        // A stop that completes across the boundary still stops.
        let mut o = Output::resumed(&stops, b"the E".to_vec(), "the ").unwrap();
        let step = o.push(b"ND!");
        assert!(step.stopped);
        assert_eq!(o.finish(), "");
    }

    #[test]
    fn a_stop_inside_one_token_cuts_it() {
        let (shown, text, _) = run(&["."], &[b"One. Two."]);
        assert_eq!(shown, vec!["One"]);
        assert_eq!(text, "One");
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        let e = "é".as_bytes();
        let (shown, text, _) = run(&[], &[b"caf", &e[..1], &e[1..], b"!"]);
        assert_eq!(shown, vec!["caf", "", "é", "!"]);
        assert_eq!(text, "café!");
    }

    #[test]
    fn stop_position_finds_the_first_stop() {
        let stops = ["b".to_owned(), "cd".to_owned()];
        assert_eq!(stop_position(b"aacdb", &stops), Some(2));
        assert_eq!(stop_position(b"aaa", &stops), None);
    }
}
