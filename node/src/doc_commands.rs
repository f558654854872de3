//! `stratus completions` and `stratus man`: generated from the clap definition of the
//! commands, so they cannot fall behind it.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::Cli;

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "stratus", &mut out);
    write_stdout(&out)
}

/// With `out`, one page per command and subcommand (`stratus-tenant-create.1`); without,
/// stratus(1) on stdout, for `stratus man | man -l -`.
pub fn man(out: Option<&Path>) -> anyhow::Result<()> {
    let Some(dir) = out else {
        let mut page = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut page)
            .context("cannot render the man page")?;
        return write_stdout(&page);
    };
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create {}: pick a folder you may write",
            dir.display()
        )
    })?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write the man pages to {}", dir.display()))?;
    let written = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.file_name().to_string_lossy().ends_with(".1"))
                .count()
        })
        .unwrap_or(0);
    println!(
        "{written} pages in {}: `man -M {} stratus` (or add it to MANPATH)",
        dir.display(),
        dir.parent().unwrap_or(dir).display()
    );
    Ok(())
}

fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        // `stratus man | head` has all it wanted.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => Ok(written?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command that lists something, by its path under `stratus`.
    const LISTS: &[&[&str]] = &[
        &["nodes"],
        &["apps"],
        &["status"],
        &["ps"],
        &["builds"],
        &["releases"],
        &["audit"],
        &["events"],
        &["whoami"],
        &["tenant", "list"],
        &["token", "list"],
        &["config"],
        &["doctor"],
        &["open"],
    ];

    fn find<'a>(command: &'a clap::Command, path: &[&str]) -> &'a clap::Command {
        path.iter().fold(command, |command, name| {
            command
                .find_subcommand(name)
                .unwrap_or_else(|| panic!("no subcommand {name} in {}", command.get_name()))
        })
    }

    #[test]
    fn every_list_command_has_json() {
        let cli = Cli::command();
        for path in LISTS {
            let command = find(&cli, path);
            assert!(
                command
                    .get_arguments()
                    .any(|arg| arg.get_long() == Some("json")),
                "stratus {} has no --json",
                path.join(" ")
            );
        }
    }

    #[test]
    fn the_clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn man_writes_a_page_for_every_command_and_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        man(Some(dir.path())).unwrap();
        let mut expected = vec!["stratus.1".to_string()];
        fn walk(prefix: &str, command: &clap::Command, out: &mut Vec<String>) {
            for sub in command.get_subcommands() {
                let name = format!("{prefix}-{}", sub.get_name());
                out.push(format!("{name}.1"));
                walk(&name, sub, out);
            }
        }
        walk("stratus", &Cli::command(), &mut expected);
        for page in &expected {
            let text = std::fs::read_to_string(dir.path().join(page))
                .unwrap_or_else(|err| panic!("{page}: {err}"));
            assert!(
                text.starts_with(".ie") || text.contains(".TH"),
                "{page}: {text}"
            );
        }
        let doctor = std::fs::read_to_string(dir.path().join("stratus-doctor.1")).unwrap();
        assert!(doctor.contains("cluster\\-key"), "{doctor}");
    }
}
