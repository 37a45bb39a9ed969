//! `--config FILE`: a TOML file whose keys are the command's long options,
//! so a config file and the command line can never disagree on names.
//!
//! ```text
//! unionsync compute mount --config /etc/unionsync/compute.toml --id 2
//!   compute.toml: mount = "/home/me"  lower = "/mnt/project"  local_only = ["scratch", ".cache"]
//!   ─► unionsync compute mount --mount /home/me --lower /mnt/project --local-only scratch,.cache --id 2
//! ```
//!
//! The file's options take the place of `--config FILE`; options given after
//! it override the file's (every option overrides itself, see `main`).

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context};

/// `args` with `--config FILE` (or `--config=FILE`) replaced by the options
/// the file holds.
pub fn expand(args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let mut out = Vec::with_capacity(args.len());
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let file = match arg.to_str() {
            Some("--config") => match args.next() {
                Some(file) => file,
                None => bail!("--config needs a FILE"),
            },
            Some(a) if a.starts_with("--config=") => OsString::from(&a["--config=".len()..]),
            // After `--`, everything is positional.
            Some("--") => {
                out.push(arg);
                out.extend(args);
                break;
            }
            _ => {
                out.push(arg);
                continue;
            }
        };
        out.extend(options_of(Path::new(&file))?);
    }
    Ok(out)
}

fn options_of(file: &Path) -> anyhow::Result<Vec<OsString>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the config file {}", file.display()))?;
    options_from(&text).with_context(|| format!("in the config file {}", file.display()))
}

/// The options a config file's text stands for.
fn options_from(text: &str) -> anyhow::Result<Vec<OsString>> {
    let table: toml::Table = text.parse().context("not valid TOML")?;
    let mut out = Vec::new();
    for (key, value) in table {
        let flag = OsString::from(format!("--{}", key.replace('_', "-")));
        let value = match value {
            toml::Value::Boolean(true) => {
                out.push(flag);
                continue;
            }
            toml::Value::Boolean(false) => continue,
            toml::Value::Array(items) => items
                .iter()
                .map(|item| scalar(&key, item))
                .collect::<anyhow::Result<Vec<_>>>()?
                .join(","),
            other => scalar(&key, &other)?,
        };
        out.push(flag);
        out.push(value.into());
    }
    Ok(out)
}

fn scalar(key: &str, value: &toml::Value) -> anyhow::Result<String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        other => bail!(
            "{key}: expected a string, number, true/false or a list of those, found {}",
            other.type_str()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn keys_become_long_options_with_dashes() {
        let text = "home = \"/srv/p\"\ntoken_file = \"/etc/t\"\nallow_insecure = true\nlisten = \"0.0.0.0:7171\"\n";
        assert_eq!(
            strings(options_from(text).unwrap()),
            [
                "--allow-insecure",
                "--home",
                "/srv/p",
                "--listen",
                "0.0.0.0:7171",
                "--token-file",
                "/etc/t"
            ]
        );
    }

    #[test]
    fn lists_become_comma_separated_and_false_is_left_out() {
        let text =
            "local_only = [\"scratch\", \".cache\"]\nallow_insecure = false\ninterval_min = 5\n";
        assert_eq!(
            strings(options_from(text).unwrap()),
            ["--interval-min", "5", "--local-only", "scratch,.cache"]
        );
    }

    #[test]
    fn the_file_takes_the_place_of_the_config_option() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "id = 7\n").unwrap();
        let args = ["unionsync", "compute", "mount", "--config"]
            .map(OsString::from)
            .into_iter()
            .chain([file.clone().into_os_string(), "--id".into(), "9".into()])
            .collect();
        assert_eq!(
            strings(expand(args).unwrap()),
            ["unionsync", "compute", "mount", "--id", "7", "--id", "9"]
        );
    }

    /// The examples in contrib/ hold only options their commands take.
    #[test]
    fn the_example_config_files_parse_as_their_commands() {
        use clap::Parser;
        for (command, text) in [
            (
                ["unionsync", "project", "serve"],
                include_str!("../../contrib/config/project.toml"),
            ),
            (
                ["unionsync", "compute", "mount"],
                include_str!("../../contrib/config/compute.toml"),
            ),
        ] {
            let args = command
                .map(OsString::from)
                .into_iter()
                .chain(options_from(text).unwrap());
            if let Err(error) = crate::Cli::try_parse_from(args) {
                panic!("{}: {error}", command.join(" "));
            }
        }
    }

    #[test]
    fn nested_tables_are_refused_with_the_key() {
        let error = options_from("[tls]\ncert = \"x\"\n").unwrap_err();
        assert!(format!("{error:#}").contains("tls"), "{error:#}");
    }

    #[test]
    fn a_missing_file_names_the_file() {
        let args = ["unionsync", "--config", "/nonexistent/u.toml"]
            .map(OsString::from)
            .to_vec();
        let error = expand(args).unwrap_err();
        assert!(
            format!("{error:#}").contains("/nonexistent/u.toml"),
            "{error:#}"
        );
    }
}
