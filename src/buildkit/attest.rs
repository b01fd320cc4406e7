//! Supply-chain attestations a build asks BuildKit for: SLSA provenance and SBOMs, with
//! buildx's flag syntax (`--attest type=…`, `--provenance`, `--sbom`) and the Dockerfile
//! frontend's `attest:provenance` / `attest:sbom` attributes they become.
//!
//! As in buildctl, a build asks for none unless told to.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use super::spec::{SpecError, parse_kv_csv};
use crate::setters::with_setters;

/// Whether a build wants one kind of attestation: not said (a caller's default applies, none
/// for a plain build), explicitly off, or on with its settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Attest<T> {
    /// Nothing was asked: none, unless a configuration (`buildkit.json`) turns it on.
    #[default]
    Unset,
    /// Explicitly off (`--provenance=false`), even when a configuration turns it on.
    Off,
    /// On, with these settings.
    On(T),
}

impl<T> Attest<T> {
    /// The settings when on.
    pub fn enabled(&self) -> Option<&T> {
        match self {
            Attest::On(settings) => Some(settings),
            _ => None,
        }
    }

    /// `self`, or `fallback` when nothing was said.
    pub fn or(self, fallback: Attest<T>) -> Attest<T> {
        match self {
            Attest::Unset => fallback,
            said => said,
        }
    }
}

/// How much the provenance records (`mode=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProvenanceMode {
    /// The materials, the frontend's inputs and the build's configuration (BuildKit's default).
    #[default]
    Min,
    /// Also every build step, with its command and sources.
    Max,
}

/// SLSA provenance settings: `type=provenance[,mode=min|max][,version=v0.2|v1][,builder-id=…]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Provenance {
    /// `mode=`; `None` leaves BuildKit's default (`min`).
    pub mode: Option<ProvenanceMode>,
    /// `version=`: the SLSA provenance version, `v0.2` or `v1`; `None` leaves BuildKit's.
    pub version: Option<String>,
    /// `builder-id=`: the URI recorded as the builder.
    pub builder_id: Option<String>,
}

/// SBOM settings: `type=sbom[,generator=IMAGE][,scan-context=true]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sbom {
    /// `generator=`: the scanner image BuildKit runs; `None` leaves BuildKit's default
    /// (`docker/buildkit-syft-scanner`). An air-gapped registry's copy goes here.
    pub generator: Option<String>,
    /// `scan-context=`: also scan the build context, not only the final image.
    pub scan_context: Option<bool>,
}

/// The attestations a build asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attestations {
    /// SLSA provenance.
    pub provenance: Attest<Provenance>,
    /// A software bill of materials.
    pub sbom: Attest<Sbom>,
}

with_setters!(Provenance {} optional {
    with_mode => mode: ProvenanceMode,
    with_version => version: String,
    with_builder_id => builder_id: String,
});

with_setters!(Sbom {} optional {
    with_generator => generator: String,
    with_scan_context => scan_context: bool,
});

with_setters!(Attestations {
    with_provenance => provenance: Attest<Provenance>,
    with_sbom => sbom: Attest<Sbom>,
});

/// One `--attest` value, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttestSpec {
    /// `type=provenance,…`.
    Provenance(Attest<Provenance>),
    /// `type=sbom,…`.
    Sbom(Attest<Sbom>),
}

const WHAT: &str = "attestation spec";

impl FromStr for AttestSpec {
    type Err = SpecError;

    /// Parses buildx's `--attest` syntax: `type=provenance|sbom`, `disabled=BOOL`, and the
    /// type's own keys.
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let fields = parse_kv_csv(WHAT, s)?;
        let error = |reason: String| SpecError::new(WHAT, s, reason);
        let mut kind = None;
        let mut disabled = false;
        let mut rest = Vec::new();
        for (key, value) in fields {
            match key.as_str() {
                "type" => kind = Some(value),
                "disabled" => disabled = parse_bool(&value).map_err(|r| error(r("disabled")))?,
                _ => rest.push((key, value)),
            }
        }
        let kind = kind.ok_or_else(|| {
            error("type= is missing: give type=provenance or type=sbom".to_owned())
        })?;
        match kind.as_str() {
            "provenance" => {
                let mut p = Provenance::default();
                for (key, value) in rest {
                    match key.as_str() {
                        "mode" => {
                            p.mode = Some(match value.as_str() {
                                "min" => ProvenanceMode::Min,
                                "max" => ProvenanceMode::Max,
                                _ => return Err(error(format!("mode={value}: use min or max"))),
                            })
                        }
                        "version" if value == "v0.2" || value == "v1" => p.version = Some(value),
                        "version" => return Err(error(format!("version={value}: use v0.2 or v1"))),
                        "builder-id" => p.builder_id = Some(value),
                        _ => {
                            return Err(error(format!(
                                "unknown key {key:?} for provenance: use mode=, version= or builder-id="
                            )));
                        }
                    }
                }
                Ok(AttestSpec::Provenance(on_or_off(disabled, p)))
            }
            "sbom" => {
                let mut sbom = Sbom::default();
                for (key, value) in rest {
                    match key.as_str() {
                        "generator" if !value.trim().is_empty() => sbom.generator = Some(value),
                        "generator" => {
                            return Err(error("generator= is empty: name an image".into()));
                        }
                        "scan-context" => {
                            let b = parse_bool(&value).map_err(|r| error(r("scan-context")))?;
                            sbom.scan_context = Some(b);
                        }
                        _ => {
                            return Err(error(format!(
                                "unknown key {key:?} for sbom: use generator= or scan-context="
                            )));
                        }
                    }
                }
                Ok(AttestSpec::Sbom(on_or_off(disabled, sbom)))
            }
            other => Err(error(format!(
                "type={other} is not supported: use provenance or sbom"
            ))),
        }
    }
}

impl AttestSpec {
    /// Parses the shorthand `--provenance[=VALUE]` (`kind` `provenance`) or `--sbom[=VALUE]`:
    /// a boolean turns it on or off, anything else is that type's keys, as buildx reads them.
    ///
    /// # Errors
    /// As [`AttestSpec::from_str`], naming `value` as given (not the `type=…` spec it
    /// stands for).
    pub fn shorthand(kind: &'static str, value: &str) -> Result<AttestSpec, SpecError> {
        let value = value.trim();
        let spec = match parse_bool(value) {
            Ok(on) => format!("type={kind},disabled={}", !on),
            Err(_) if value.is_empty() => format!("type={kind}"),
            Err(_) => format!("type={kind},{value}"),
        };
        let what = if kind == "sbom" {
            "SBOM value"
        } else {
            "provenance value"
        };
        spec.parse()
            .map_err(|e: SpecError| SpecError::new(what, value, e.reason))
    }
}

fn on_or_off<T>(disabled: bool, settings: T) -> Attest<T> {
    if disabled {
        Attest::Off
    } else {
        Attest::On(settings)
    }
}

/// Go's `strconv.ParseBool` spellings, which buildx accepts; the error names the key.
fn parse_bool(value: &str) -> Result<bool, impl Fn(&str) -> String + '_> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(move |key: &str| format!("{key}={value}: use true or false")),
    }
}

impl Attestations {
    /// Adds one `--attest` value; a type given twice is an error, as in buildx.
    ///
    /// # Errors
    /// The type's description when it was already set.
    pub fn add(&mut self, spec: AttestSpec) -> Result<(), String> {
        match spec {
            AttestSpec::Provenance(p) if self.provenance == Attest::Unset => self.provenance = p,
            AttestSpec::Sbom(s) if self.sbom == Attest::Unset => self.sbom = s,
            AttestSpec::Provenance(_) => return Err("provenance is asked for twice".into()),
            AttestSpec::Sbom(_) => return Err("sbom is asked for twice".into()),
        }
        Ok(())
    }

    /// The frontend attributes (`attest:provenance`, `attest:sbom`) in buildx's value syntax.
    /// What is not on sends nothing: a present attribute turns its attestation on.
    pub fn frontend_attrs(&self) -> BTreeMap<String, String> {
        let mut attrs = BTreeMap::new();
        if let Some(p) = self.provenance.enabled() {
            attrs.insert("attest:provenance".to_owned(), p.to_string());
        }
        if let Some(s) = self.sbom.enabled() {
            attrs.insert("attest:sbom".to_owned(), s.to_string());
        }
        attrs
    }
}

/// Writes `key=value` as one CSV field, quoted when the value would split it.
fn field(out: &mut fmt::Formatter<'_>, key: &str, value: &str) -> fmt::Result {
    if value.contains([',', '"']) {
        write!(out, ",\"{key}={}\"", value.replace('"', "\"\""))
    } else {
        write!(out, ",{key}={value}")
    }
}

impl fmt::Display for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("type=provenance")?;
        match self.mode {
            Some(ProvenanceMode::Min) => field(f, "mode", "min")?,
            Some(ProvenanceMode::Max) => field(f, "mode", "max")?,
            None => {}
        }
        if let Some(version) = &self.version {
            field(f, "version", version)?;
        }
        if let Some(id) = &self.builder_id {
            field(f, "builder-id", id)?;
        }
        Ok(())
    }
}

impl fmt::Display for Sbom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("type=sbom")?;
        if let Some(generator) = &self.generator {
            field(f, "generator", generator)?;
        }
        if let Some(scan) = self.scan_context {
            field(f, "scan-context", if scan { "true" } else { "false" })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(specs: &[&str]) -> BTreeMap<String, String> {
        let mut a = Attestations::default();
        for s in specs {
            a.add(s.parse().unwrap()).unwrap();
        }
        a.frontend_attrs()
    }

    #[test]
    fn attest_flags_become_buildx_attributes() {
        let a = attrs(&[r#"type=provenance,mode=max,version=v1,"builder-id=https://ci/x,y""#]);
        assert_eq!(
            a["attest:provenance"],
            "type=provenance,mode=max,version=v1,\"builder-id=https://ci/x,y\""
        );
        let a = attrs(&["type=sbom,generator=reg/scan:1,scan-context=true"]);
        assert_eq!(
            a["attest:sbom"],
            "type=sbom,generator=reg/scan:1,scan-context=true"
        );
        assert!(attrs(&["type=provenance,disabled=true"]).is_empty());
        assert!(attrs(&[]).is_empty());
    }

    #[test]
    fn shorthands_read_as_buildx() {
        let on = AttestSpec::shorthand("provenance", "mode=max").unwrap();
        let AttestSpec::Provenance(Attest::On(p)) = on else {
            panic!("{on:?}")
        };
        assert_eq!(p.mode, Some(ProvenanceMode::Max));
        assert_eq!(
            AttestSpec::shorthand("provenance", "false").unwrap(),
            AttestSpec::Provenance(Attest::Off)
        );
        assert_eq!(
            AttestSpec::shorthand("sbom", "true").unwrap(),
            AttestSpec::Sbom(Attest::On(Sbom::default()))
        );
        let AttestSpec::Sbom(Attest::On(s)) = AttestSpec::shorthand("sbom", "generator=g").unwrap()
        else {
            panic!()
        };
        assert_eq!(s.generator.as_deref(), Some("g"));
    }

    #[test]
    fn bad_values_say_what_to_use() {
        for (spec, hint) in [
            ("mode=max", "type= is missing"),
            ("type=vex", "use provenance or sbom"),
            ("type=provenance,mode=full", "use min or max"),
            ("type=provenance,version=v3", "use v0.2 or v1"),
            ("type=provenance,generator=x", "unknown key"),
            ("type=sbom,scan-context=maybe", "use true or false"),
            ("type=sbom,generator=", "name an image"),
        ] {
            let err = spec.parse::<AttestSpec>().unwrap_err();
            assert!(err.reason.contains(hint), "{spec}: {}", err.reason);
        }
        let mut a = Attestations::default();
        a.add("type=sbom".parse().unwrap()).unwrap();
        assert!(a.add("type=sbom,disabled=true".parse().unwrap()).is_err());
        // A shorthand's error names the value as given.
        let err = AttestSpec::shorthand("sbom", "bogus").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid SBOM value \"bogus\": \"bogus\" is not key=value"
        );
    }
}
