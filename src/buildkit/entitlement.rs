//! Entitlements: privileges a build asks the daemon for (buildctl's `--allow`). The daemon
//! grants one only when its own configuration allows it too.

use std::fmt;

/// A privilege a build asks for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Entitlement {
    /// `network.host`: `RUN --network=host`.
    NetworkHost,
    /// `security.insecure`: `RUN --security=insecure` (a privileged container).
    SecurityInsecure,
    /// `device`: devices (CDI) in `RUN --device`.
    Device,
    /// Any other entitlement, by its wire name (for daemons newer than this crate).
    Other(String),
}

impl Entitlement {
    /// The name on the wire, e.g. `network.host`.
    pub fn as_str(&self) -> &str {
        match self {
            Entitlement::NetworkHost => "network.host",
            Entitlement::SecurityInsecure => "security.insecure",
            Entitlement::Device => "device",
            Entitlement::Other(name) => name,
        }
    }
}

impl fmt::Display for Entitlement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Entitlement {
    type Err = std::convert::Infallible;
    /// Any name parses: the known ones to their variants, the rest to [`Entitlement::Other`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "network.host" => Entitlement::NetworkHost,
            "security.insecure" => Entitlement::SecurityInsecure,
            "device" => Entitlement::Device,
            other => Entitlement::Other(other.to_owned()),
        })
    }
}
