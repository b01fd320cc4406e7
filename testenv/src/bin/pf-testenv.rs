//! `pf-testenv`: starts, stops and reports on the shared test environment (see the
//! `pf_testenv` library). `scripts/testenv` installs what it needs and delegates here.
//!
//! ```text
//! pf-testenv start    start (or find running) and print the env lines
//! pf-testenv stop     stop what `start` started (idempotent)
//! pf-testenv env      print the env lines if running, exit 1 otherwise
//! pf-testenv status   say what runs
//! pf-testenv tier     one line: whether the standalone BuildKit tier runs, and why not
//! pf-testenv kube-tier  one line: whether the Kubernetes tier runs, and why not
//! ```
//!
//! Settings come from the environment (`PF_TESTENV_DIR`, `PF_TEST_REGISTRY_PORT`, …: see
//! `Settings::from_env`). Errors are one line on stderr and exit 1; a wrong command exits 2.

use std::process::ExitCode;

use pf_testenv::supervisor::{self, Files};
use pf_testenv::{Error, Settings};

const USAGE: &str = "usage: pf-testenv start|stop|env|status|tier|kube-tier";

fn main() -> ExitCode {
    let command = std::env::args().nth(1).unwrap_or_default();
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let result = match command.as_str() {
        "start" => start(&settings),
        "stop" => supervisor::stop(&settings).map(|()| eprintln!("testenv: stopped")),
        "env" => match Files::new(&settings.dir).running_env() {
            Some(env) => {
                print!("{env}");
                Ok(())
            }
            None => Err(Error::msg(
                "not running (start it with: scripts/testenv start)",
            )),
        },
        "status" => {
            status(&settings);
            Ok(())
        }
        "tier" => {
            println!("{}", tier_line(&settings));
            Ok(())
        }
        "kube-tier" => {
            println!("{}", kube_tier_line(&settings));
            Ok(())
        }
        supervisor::SUPERVISE => supervisor::supervise(&settings),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &Error) -> ExitCode {
    eprintln!("testenv: error: {e}");
    ExitCode::FAILURE
}

fn start(settings: &Settings) -> pf_testenv::Result<()> {
    if unsafe_is_not_root() {
        return Err(Error::msg(
            "must run as root (the daemons mount and run containers)",
        ));
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::msg(format!("cannot tell this program's path: {e}")))?;
    let env = supervisor::start(settings, &exe)?;
    eprintln!("testenv: {}", tier_line(settings));
    eprintln!("testenv: {}", kube_tier_line(settings));
    print!("{env}");
    Ok(())
}

fn unsafe_is_not_root() -> bool {
    // SAFETY: geteuid has no failure mode and no memory effects.
    unsafe { libc::geteuid() != 0 }
}

fn status(settings: &Settings) {
    let files = Files::new(&settings.dir);
    match files.supervisor() {
        Some(pid) => eprintln!("testenv: supervisor: running (pid {pid})"),
        None => eprintln!("testenv: supervisor: not running"),
    }
    for (name, pid) in files.status() {
        match pid {
            Some(pid) => eprintln!("testenv: {name}: running (pid {pid})"),
            None => eprintln!("testenv: {name}: not running"),
        }
    }
    eprintln!("testenv: {}", tier_line(settings));
    eprintln!("testenv: {}", kube_tier_line(settings));
}

/// One line on the standalone tier, for `start` and scripts/test.
fn tier_line(settings: &Settings) -> String {
    let files = Files::new(&settings.dir);
    let addr = format!("tcp://127.0.0.1:{}", settings.buildkit_port);
    match settings.buildkitd_binary() {
        None if !settings.buildkit_xz.is_file() => format!(
            "standalone BuildKit tier: skipped (no {}; PF_TESTENV_BUILDKIT names another file)",
            settings.buildkit_xz.display()
        ),
        None => "standalone BuildKit tier: not installed (scripts/testenv start unpacks it)".into(),
        Some(_) if files.running_env().is_some_and(|e| e.contains(&addr)) => {
            format!("standalone BuildKit tier: buildkitd v0.32.2 on {addr}")
        }
        Some(_) => {
            "standalone BuildKit tier: not running (start it with: scripts/testenv start)".into()
        }
    }
}

/// One line on the Kubernetes tier, for `start` and scripts/test.
fn kube_tier_line(settings: &Settings) -> String {
    let server = format!("https://127.0.0.1:{}", settings.kube_ports().apiserver);
    let running = || {
        Files::new(&settings.dir)
            .running_env()
            .is_some_and(|e| e.contains(&format!("PF_TEST_KUBE_SERVER={server}\n")))
    };
    if settings.buildkitd_binary().is_none() {
        "Kubernetes tier: skipped (it needs the standalone buildkitd, which is missing)".into()
    } else if !settings.kube_shared_present() {
        format!(
            "Kubernetes tier: skipped (no {} with README.md in {}; PF_TESTENV_KUBE names another folder)",
            pf_testenv::settings::KUBE_FILES.join(" "),
            settings.kube_shared.display()
        )
    } else if settings.kube_binaries().is_none() {
        "Kubernetes tier: not installed (scripts/testenv start unpacks it)".into()
    } else if running() {
        format!("Kubernetes tier: kube-apiserver v1.36.2 on {server}")
    } else {
        "Kubernetes tier: not running (start it with: scripts/testenv start)".into()
    }
}
