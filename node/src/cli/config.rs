//! `--config` files: `CACTUS_NAME=value` lines, where each name is the
//! environment variable of a flag. The file is fed to clap as the flags it
//! names, so the precedence is file < environment < command line, and a key
//! that is no flag's variable is an error that names it.

use crate::report::{FileError, read_small_file};
use clap::Command;
use clap::builder::ArgAction;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// Largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// The flag naming the config file, and its environment variable.
const CONFIG_FLAG: &str = "--config";
const CONFIG_ENV: &str = "CACTUS_CONFIG";

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("config file")]
    File(#[from] FileError),
    #[error("{path}:{line}: expected CACTUS_NAME=value")]
    Syntax { path: PathBuf, line: usize },
    #[error(
        "{path}:{line}: {key} is not a setting of cactus-node (see --help for each flag's variable)"
    )]
    UnknownKey {
        path: PathBuf,
        line: usize,
        key: String,
    },
    #[error("{path}:{line}: {key}={value:?}: expected true or false")]
    NotABool {
        path: PathBuf,
        line: usize,
        key: String,
        value: String,
    },
}

/// One `KEY=value` line of a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub line: usize,
    pub key: String,
    pub value: String,
}

/// Parses a config file's text: blank lines and `#` comments are skipped,
/// values may be double-quoted.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Setting>, ConfigError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(ConfigError::Syntax {
                path: path.to_path_buf(),
                line: n + 1,
            });
        };
        out.push(Setting {
            line: n + 1,
            key: k.trim().to_owned(),
            value: v.trim().trim_matches('"').to_owned(),
        });
    }
    Ok(out)
}

/// The config file named by `--config FILE` / `--config=FILE` in `args`, or
/// by the environment.
fn config_path(args: &[OsString], env: &impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == CONFIG_FLAG {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--config=")) {
            return Some(v.into());
        }
    }
    env(CONFIG_ENV).map(PathBuf::from)
}

/// Every environment variable of `cmd` and its subcommands.
fn all_envs(cmd: &Command, out: &mut Vec<OsString>) {
    out.extend(
        cmd.get_arguments()
            .filter_map(|a| a.get_env())
            .map(OsStr::to_owned),
    );
    cmd.get_subcommands().for_each(|s| all_envs(s, out));
}

/// The subcommand `args` run (`cmd` itself when none) and how many leading
/// arguments name it (the binary's name included). `--config FILE` may come
/// before the subcommand's name: it is global.
fn target<'a>(cmd: &'a Command, args: &[OsString]) -> (&'a Command, usize) {
    let (mut cmd, mut at) = (cmd, 1);
    loop {
        if args.get(at).is_some_and(|a| a == CONFIG_FLAG) {
            at += 2;
            continue;
        }
        if args
            .get(at)
            .and_then(|a| a.to_str())
            .is_some_and(|a| a.starts_with("--config="))
        {
            at += 1;
            continue;
        }
        let next = args.get(at).and_then(|a| a.to_str()).and_then(|name| {
            cmd.get_subcommands()
                .find(|s| s.get_name() == name || s.get_all_aliases().any(|x| x == name))
        });
        match next {
            Some(sub) => {
                cmd = sub;
                at += 1;
            }
            None => return (cmd, at),
        }
    }
}

/// Whether `args` give the flag `--long` (or its short form) themselves.
fn given(args: &[OsString], long: Option<&str>, short: Option<char>) -> bool {
    args.iter().filter_map(|a| a.to_str()).any(|a| {
        long.is_some_and(|l| {
            a.strip_prefix("--")
                .is_some_and(|rest| rest == l || rest.starts_with(&format!("{l}=")))
        }) || short.is_some_and(|s| {
            a.len() >= 2 && a.starts_with('-') && !a.starts_with("--") && a[1..].starts_with(s)
        })
    })
}

/// The arguments clap should parse: `args` with, after the subcommand's name,
/// the flags of the config file's settings that neither the environment
/// (read through `env`) nor `args` give. Without a config file, `args`
/// unchanged. A key no flag of `cmd` (any subcommand) reads is an error; a
/// key of another subcommand's flag is left for that subcommand.
pub fn effective_args(
    cmd: &Command,
    args: Vec<OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Vec<OsString>, ConfigError> {
    let Some(path) = config_path(&args, &env) else {
        return Ok(args);
    };
    let settings = parse(&path, &read_small_file(&path, MAX_CONFIG_BYTES)?)?;
    let mut known = Vec::new();
    all_envs(cmd, &mut known);
    let (sub, at) = target(cmd, &args);
    let mut extra: Vec<OsString> = Vec::new();
    for s in settings {
        if s.key == CONFIG_ENV || !known.iter().any(|k| k == s.key.as_str()) {
            return Err(ConfigError::UnknownKey {
                path,
                line: s.line,
                key: s.key,
            });
        }
        let Some(arg) = sub
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == s.key.as_str()))
        else {
            continue;
        };
        let Some(long) = arg.get_long() else {
            continue;
        };
        if env(&s.key).is_some() || given(&args, Some(long), arg.get_short()) {
            continue;
        }
        if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
            match s.value.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => extra.push(format!("--{long}").into()),
                "false" | "no" | "off" | "0" | "" => {}
                _ => {
                    return Err(ConfigError::NotABool {
                        path,
                        line: s.line,
                        key: s.key,
                        value: s.value,
                    });
                }
            }
        } else {
            extra.push(format!("--{long}={}", s.value).into());
        }
    }
    let at = at.min(args.len());
    let mut out = args;
    out.splice(at..at, extra);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::commands::{Cli, Command as Sub};
    use clap::{CommandFactory, Parser};
    use std::collections::HashMap;

    fn parse_with(file: &str, env: &[(&str, &str)], args: &[&str]) -> Result<Cli, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.conf");
        std::fs::write(&path, file).unwrap();
        let env: HashMap<String, OsString> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        let mut argv: Vec<OsString> = vec!["cactus-node".into()];
        argv.extend(args.iter().map(OsString::from));
        argv.push("--config".into());
        argv.push(path.into_os_string());
        let argv = effective_args(&Cli::command(), argv, |k| env.get(k).cloned())
            .map_err(|e| crate::report::audit::error_chain(&e))?;
        // clap reads the real environment too: the tests use variables no
        // test environment sets, and give `env` to clap through the flags.
        let mut with_env = argv.clone();
        for (k, v) in &env {
            let arg = Cli::command()
                .get_arguments()
                .find(|a| a.get_env().is_some_and(|e| e == k.as_str()))
                .and_then(|a| a.get_long())
                .map(|l| format!("--{l}"));
            if let Some(flag) = arg.filter(|f| !given(&argv, Some(&f[2..]), None)) {
                with_env.insert(1, v.clone());
                with_env.insert(1, flag.into());
            }
        }
        Cli::try_parse_from(with_env).map_err(|e| e.to_string())
    }

    #[test]
    fn a_file_sets_any_flag_cactus_slots_included() {
        let cli = parse_with(
            "# a node\nCACTUS_SLOTS=3\n\nCACTUS_ROLE=\"router\"\nCACTUS_RELAY=true\n",
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(cli.node.slots, 3);
        assert_eq!(cli.node.role, crate::node::Role::Router);
        assert!(cli.node.mesh.relay);
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        let e = parse_with("CACTUS_SLOTS=4\nCACTUS_SLOTZ=4\n", &[], &[]).unwrap_err();
        assert!(e.contains("CACTUS_SLOTZ") && e.contains(":2:"), "{e}");
        let e = parse_with("SLOTS=4\n", &[], &[]).unwrap_err();
        assert!(e.contains("SLOTS is not a setting"), "{e}");
        let e = parse_with("CACTUS_CONFIG=other\n", &[], &[]).unwrap_err();
        assert!(e.contains("CACTUS_CONFIG"), "{e}");
        let e = parse_with("CACTUS_SLOTS\n", &[], &[]).unwrap_err();
        assert!(e.contains("expected CACTUS_NAME=value"), "{e}");
    }

    #[test]
    fn the_environment_overrides_the_file_and_flags_override_both() {
        let file = "CACTUS_SLOTS=3\nCACTUS_QUEUE=9\n";
        let cli = parse_with(file, &[("CACTUS_SLOTS", "6")], &[]).unwrap();
        assert_eq!((cli.node.slots, cli.node.queue), (6, 9));
        let cli = parse_with(file, &[("CACTUS_SLOTS", "6")], &["--slots", "8"]).unwrap();
        assert_eq!((cli.node.slots, cli.node.queue), (8, 9));
        let cli = parse_with(file, &[], &["--queue=2"]).unwrap();
        assert_eq!((cli.node.slots, cli.node.queue), (3, 2));
    }

    #[test]
    fn a_subcommand_takes_the_keys_of_its_flags_and_ignores_the_others() {
        let file = "CACTUS_SLOTS=4\nCACTUS_DATA_DIR=/tmp/router\n";
        let cli = parse_with(file, &[], &["receipts", "--json"]).unwrap();
        match cli.command {
            Some(Sub::Receipts(a)) => {
                assert_eq!(a.data.data_dir, Some(PathBuf::from("/tmp/router")));
                assert!(a.json);
            }
            other => panic!("{other:?}"),
        }
        let cli = parse_with(file, &[], &["ledger"]).unwrap();
        assert!(
            matches!(cli.command, Some(Sub::Receipts(_))),
            "ledger stays an alias"
        );
        let e = parse_with("CACTUS_RELAY=maybe\n", &[], &[]).unwrap_err();
        assert!(e.contains("CACTUS_RELAY"), "{e}");
    }

    #[test]
    fn without_a_config_file_the_arguments_are_unchanged() {
        let argv: Vec<OsString> = vec!["cactus-node".into(), "--slots".into(), "2".into()];
        let out = effective_args(&Cli::command(), argv.clone(), |_| None).unwrap();
        assert_eq!(out, argv);
    }
}
