//! The binary's one error formatter. A failure prints as one line: the error and its causes,
//! each said once, then — where the library's error names a situation a flag fixes — which
//! flag. Library errors speak of values (a path, a pod, an architecture); only this module
//! knows the command line, so the flag hints live here and nowhere in `pf_buildkit`.

use pf_buildkit::fleet;

/// One line for an error: the message and its causes, each said once, and a hint naming the
/// flag or command that fixes it, when there is one.
pub fn format_error(err: &anyhow::Error) -> String {
    let mut line = chain(err.as_ref());
    if let Some(hint) = hint(err) {
        line.push_str("; ");
        line.push_str(&hint);
    }
    line
}

/// An error and its `source()` chain: each message that adds something, joined by `: ` (a
/// cause whose text its parent already quotes, or an empty one, is left out; line breaks
/// become spaces).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        next = e.source();
    }
    out.replace('\n', " ")
}

/// The command-line fix for the first error in the chain that has one.
fn hint(err: &anyhow::Error) -> Option<String> {
    err.chain().find_map(|cause| {
        if let Some(e) = cause.downcast_ref::<fleet::Error>() {
            return fleet_hint(e);
        }
        None
    })
}

fn fleet_hint(err: &fleet::Error) -> Option<String> {
    match err {
        fleet::Error::NoRunningPods { arch, .. } => Some(format!(
            "scale up first: pf-buildkit scale up --only {arch} --wait"
        )),
        // Advice that names a program the library does not use: the binary's to give.
        fleet::Error::ScaleUpTimeout { namespace, .. } => Some(format!(
            "check the pods with `kubectl get pods -n {namespace}`"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Quoting(#[source] std::io::Error);

    #[test]
    fn a_cause_the_parent_quotes_is_said_once() {
        let err = anyhow::Error::new(Quoting(std::io::Error::other("disk full")))
            .context("cannot write /x");
        assert_eq!(format_error(&err), "cannot write /x: outer: disk full");
    }

    #[test]
    fn a_scale_up_timeout_names_the_kubectl_command() {
        let err = anyhow::Error::new(fleet::Error::ScaleUpTimeout {
            statefulsets: "buildkit-amd64".into(),
            seconds: 3,
            namespace: "ci-builds".into(),
        });
        assert_eq!(
            format_error(&err),
            "timed out after 3 s waiting for an available BuildKit replica of buildkit-amd64 in namespace ci-builds; check the pods with `kubectl get pods -n ci-builds`"
        );
    }

    #[test]
    fn a_missing_pod_names_the_scale_up_command() {
        let err = anyhow::Error::new(fleet::Error::NoRunningPods {
            arch: fleet::Arch::Arm64,
            namespace: "buildkit".into(),
        });
        let line = format_error(&err);
        assert!(
            line.ends_with("; scale up first: pf-buildkit scale up --only arm64 --wait"),
            "{line}"
        );
    }
}
