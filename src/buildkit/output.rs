//! What a build produces and which caches it uses, as typed values: [`Output`] (an exporter
//! and where the client puts what it sends) and [`Cache`] (a cache backend). Each knows the
//! exporter or backend type and attributes it becomes on the wire; `Raw` variants send any
//! type with attributes as given, for what the daemon knows and this crate does not.
//!
//! buildctl's CSV syntax (`type=image,name=…,push=true`) parses into these in `spec`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Attributes of an exporter or cache backend, by name, sent as given.
pub type Attrs = BTreeMap<String, String>;

/// `with_attr`, `attrs` and `attrs_mut` for an enum whose every variant holds an `attrs: Attrs`
/// beside its own fields, written once for [`Output`] and [`Cache`]. The variants are listed
/// by name; one left out (or added later and not listed) fails the build, as the match would.
macro_rules! attrs_in_every_variant {
    ($ty:ident: $($variant:ident),+ $(,)?) => {
        impl $ty {
            /// Adds an attribute, sent as given (replacing one of the same name).
            #[must_use]
            pub fn with_attr(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
                self.attrs_mut().insert(key.into(), value.into());
                self
            }

            /// The further attributes (those without a field of their own).
            pub fn attrs(&self) -> &Attrs {
                match self {
                    $($ty::$variant { attrs, .. })|+ => attrs,
                }
            }

            /// The further attributes, to change.
            fn attrs_mut(&mut self) -> &mut Attrs {
                match self {
                    $($ty::$variant { attrs, .. })|+ => attrs,
                }
            }
        }
    };
}

attrs_in_every_variant!(Output: Image, Moby, Local, Tar, Oci, Docker, Raw);
attrs_in_every_variant!(Cache: Registry, Local, Inline, S3, Gha, AzBlob, Raw);

/// One output of a build.
///
/// ```
/// use pf_buildkit::buildkit::Output;
///
/// let push = Output::image("registry.example/app:1").with_push(true);
/// let files = Output::local("out");
/// let layout = Output::oci_layout("layout").with_attr("name", "app:1");
/// assert_eq!(push.kind(), "image");
/// assert!(layout.is_layout_dir());
/// # let _ = files;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// `type=image`: an image in the daemon's image store, pushed to a registry when `push`.
    #[non_exhaustive]
    Image {
        /// The image's name(s), comma-separated; `None` leaves it unnamed.
        name: Option<String>,
        /// Push it to the registry `name` points at.
        push: bool,
        /// Further exporter attributes (`registry.insecure`, `compression`, …).
        attrs: Attrs,
    },
    /// `type=moby`: an image in the Docker Engine's own image store.
    #[non_exhaustive]
    Moby {
        /// The image's name(s), comma-separated.
        name: Option<String>,
        /// Further exporter attributes.
        attrs: Attrs,
    },
    /// `type=local`: the result's files, written into the directory `dest`.
    #[non_exhaustive]
    Local {
        /// The directory the client writes the files into.
        dest: PathBuf,
        /// Further exporter attributes (`platform-split`, …).
        attrs: Attrs,
    },
    /// `type=tar`: the result's files as a tarball at `dest`.
    #[non_exhaustive]
    Tar {
        /// The file the client writes.
        dest: PathBuf,
        /// Further exporter attributes.
        attrs: Attrs,
    },
    /// `type=oci`: an OCI image, as an archive at `dest`, or (`tar: false`) as an OCI layout
    /// directory at `dest` that the daemon writes through the session's content store.
    #[non_exhaustive]
    Oci {
        /// The archive file, or the layout directory.
        dest: PathBuf,
        /// An archive (`true`) or a layout directory (`false`).
        tar: bool,
        /// Further exporter attributes (`name`, …).
        attrs: Attrs,
    },
    /// `type=docker`: a Docker image archive at `dest`.
    #[non_exhaustive]
    Docker {
        /// The archive file.
        dest: PathBuf,
        /// Further exporter attributes (`name`, …).
        attrs: Attrs,
    },
    /// Any exporter, by type and attributes, sent as given; the client receives nothing
    /// from it.
    #[non_exhaustive]
    Raw {
        /// The exporter type.
        kind: String,
        /// Its attributes.
        attrs: Attrs,
    },
}

impl Output {
    /// `type=image` named `name` (not pushed; see [`Output::with_push`]).
    pub fn image(name: impl Into<String>) -> Self {
        Output::Image {
            name: Some(name.into()),
            push: false,
            attrs: Attrs::new(),
        }
    }

    /// `type=moby` named `name`.
    pub fn moby(name: impl Into<String>) -> Self {
        Output::Moby {
            name: Some(name.into()),
            attrs: Attrs::new(),
        }
    }

    /// `type=local`: the files into the directory `dest`.
    pub fn local(dest: impl Into<PathBuf>) -> Self {
        Output::Local {
            dest: dest.into(),
            attrs: Attrs::new(),
        }
    }

    /// `type=tar`: the files as a tarball at `dest`.
    pub fn tar(dest: impl Into<PathBuf>) -> Self {
        Output::Tar {
            dest: dest.into(),
            attrs: Attrs::new(),
        }
    }

    /// `type=oci`: an OCI image archive at `dest`.
    pub fn oci(dest: impl Into<PathBuf>) -> Self {
        Output::Oci {
            dest: dest.into(),
            tar: true,
            attrs: Attrs::new(),
        }
    }

    /// `type=oci,tar=false`: an OCI layout directory at `dest`.
    pub fn oci_layout(dest: impl Into<PathBuf>) -> Self {
        Output::Oci {
            dest: dest.into(),
            tar: false,
            attrs: Attrs::new(),
        }
    }

    /// `type=docker`: a Docker image archive at `dest`.
    pub fn docker(dest: impl Into<PathBuf>) -> Self {
        Output::Docker {
            dest: dest.into(),
            attrs: Attrs::new(),
        }
    }

    /// Any exporter `kind` with `attrs`, sent as given.
    pub fn raw(kind: impl Into<String>, attrs: Attrs) -> Self {
        Output::Raw {
            kind: kind.into(),
            attrs,
        }
    }

    /// Sets whether a `type=image` output is pushed; other outputs are left as they are.
    #[must_use]
    pub fn with_push(mut self, push: bool) -> Self {
        if let Output::Image { push: p, .. } = &mut self {
            *p = push;
        }
        self
    }

    /// The exporter type: `image`, `local`, `tar`, `oci`, `docker`, `moby`, or a raw one.
    pub fn kind(&self) -> &str {
        match self {
            Output::Image { .. } => "image",
            Output::Moby { .. } => "moby",
            Output::Local { .. } => "local",
            Output::Tar { .. } => "tar",
            Output::Oci { .. } => "oci",
            Output::Docker { .. } => "docker",
            Output::Raw { kind, .. } => kind,
        }
    }

    /// Where the client writes what the exporter sends: a directory for `local` and OCI
    /// layouts, a file otherwise; `None` for outputs the daemon keeps or pushes.
    pub fn dest(&self) -> Option<&Path> {
        match self {
            Output::Local { dest, .. }
            | Output::Tar { dest, .. }
            | Output::Oci { dest, .. }
            | Output::Docker { dest, .. } => Some(dest),
            Output::Image { .. } | Output::Moby { .. } | Output::Raw { .. } => None,
        }
    }

    /// Points the output at another destination (stores make theirs absolute).
    pub(crate) fn set_dest(&mut self, to: PathBuf) {
        if let Output::Local { dest, .. }
        | Output::Tar { dest, .. }
        | Output::Oci { dest, .. }
        | Output::Docker { dest, .. } = self
        {
            *dest = to;
        }
    }

    /// Whether this output is an OCI layout directory (`type=oci,tar=false`), which the
    /// daemon writes through the session's content store.
    pub fn is_layout_dir(&self) -> bool {
        matches!(self, Output::Oci { tar: false, .. })
    }

    /// Whether the client receives a directory of files (`type=local`).
    pub(crate) fn is_directory(&self) -> bool {
        matches!(self, Output::Local { .. })
    }

    /// The exporter type and attributes sent to the daemon. The destination stays on the
    /// client; an OCI layout sends `tar=false`, which makes the daemon write into the
    /// session's content store.
    pub fn wire(&self) -> (String, Attrs) {
        let mut attrs = self.attrs().clone();
        match self {
            Output::Image { name, push, .. } => {
                if let Some(name) = name {
                    attrs.insert("name".into(), name.clone());
                }
                if *push {
                    attrs.insert("push".into(), "true".into());
                }
            }
            Output::Moby {
                name: Some(name), ..
            } => {
                attrs.insert("name".into(), name.clone());
            }
            Output::Oci { tar: false, .. } => {
                attrs.insert("tar".into(), "false".into());
            }
            _ => {}
        }
        (self.kind().to_owned(), attrs)
    }
}

/// Whether a cache is exported to or imported from (a local cache's directory is `dest`
/// in one and `src` in the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheDirection {
    /// A cache export (buildctl's `--export-cache`).
    Export,
    /// A cache import (buildctl's `--import-cache`).
    Import,
}

/// One cache export or import.
///
/// ```
/// use pf_buildkit::buildkit::Cache;
///
/// let shared = Cache::registry("registry.example/app:cache").with_attr("mode", "max");
/// let local = Cache::local("/var/cache/app");
/// assert_eq!(shared.kind(), "registry");
/// # let _ = local;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cache {
    /// `type=registry`: a cache image at `reference`.
    #[non_exhaustive]
    Registry {
        /// The cache image's reference (`ref`).
        reference: String,
        /// Further attributes (`mode`, `compression`, …).
        attrs: Attrs,
    },
    /// `type=local`: an OCI layout directory on the client (`dest` when exported, `src`
    /// when imported), served through the session.
    #[non_exhaustive]
    Local {
        /// The layout directory.
        path: PathBuf,
        /// Further attributes (`mode`, `tag`, `digest`, …).
        attrs: Attrs,
    },
    /// `type=inline`: the cache in the exported image's config (export only).
    #[non_exhaustive]
    Inline {
        /// Further attributes.
        attrs: Attrs,
    },
    /// `type=s3`: an S3 bucket.
    #[non_exhaustive]
    S3 {
        /// The bucket; `None` leaves it to the daemon's `AWS_BUCKET`.
        bucket: Option<String>,
        /// The region; `None` leaves it to the daemon's `AWS_REGION`.
        region: Option<String>,
        /// Further attributes (`name`, `mode`, `endpoint_url`, credentials, …).
        attrs: Attrs,
    },
    /// `type=gha`: the GitHub Actions cache.
    #[non_exhaustive]
    Gha {
        /// Its attributes (`scope`, `url`, `token`, …).
        attrs: Attrs,
    },
    /// `type=azblob`: Azure Blob Storage.
    #[non_exhaustive]
    AzBlob {
        /// Its attributes (`account_url`, `name`, …).
        attrs: Attrs,
    },
    /// Any backend, by type and attributes, sent as given.
    #[non_exhaustive]
    Raw {
        /// The backend type.
        kind: String,
        /// Its attributes.
        attrs: Attrs,
    },
}

impl Cache {
    /// `type=registry,ref=REFERENCE`.
    pub fn registry(reference: impl Into<String>) -> Self {
        Cache::Registry {
            reference: reference.into(),
            attrs: Attrs::new(),
        }
    }

    /// `type=local`: the OCI layout directory `path`.
    pub fn local(path: impl Into<PathBuf>) -> Self {
        Cache::Local {
            path: path.into(),
            attrs: Attrs::new(),
        }
    }

    /// `type=inline`.
    pub fn inline() -> Self {
        Cache::Inline {
            attrs: Attrs::new(),
        }
    }

    /// `type=s3` in `bucket` of `region`.
    pub fn s3(bucket: impl Into<String>, region: impl Into<String>) -> Self {
        Cache::S3 {
            bucket: Some(bucket.into()),
            region: Some(region.into()),
            attrs: Attrs::new(),
        }
    }

    /// Any backend `kind` with `attrs`, sent as given.
    pub fn raw(kind: impl Into<String>, attrs: Attrs) -> Self {
        Cache::Raw {
            kind: kind.into(),
            attrs,
        }
    }

    /// The backend type: `registry`, `local`, `inline`, `s3`, `gha`, `azblob`, or a raw one.
    pub fn kind(&self) -> &str {
        match self {
            Cache::Registry { .. } => "registry",
            Cache::Local { .. } => "local",
            Cache::Inline { .. } => "inline",
            Cache::S3 { .. } => "s3",
            Cache::Gha { .. } => "gha",
            Cache::AzBlob { .. } => "azblob",
            Cache::Raw { kind, .. } => kind,
        }
    }

    /// The backend type and attributes sent to the daemon for a cache of `direction`.
    pub fn wire(&self, direction: CacheDirection) -> (String, Attrs) {
        let mut attrs = self.attrs().clone();
        match self {
            Cache::Registry { reference, .. } => {
                attrs.insert("ref".into(), reference.clone());
            }
            Cache::Local { path, .. } => {
                let key = match direction {
                    CacheDirection::Export => "dest",
                    CacheDirection::Import => "src",
                };
                attrs.insert(key.into(), path.to_string_lossy().into_owned());
            }
            Cache::S3 { bucket, region, .. } => {
                if let Some(bucket) = bucket {
                    attrs.insert("bucket".into(), bucket.clone());
                }
                if let Some(region) = region {
                    attrs.insert("region".into(), region.clone());
                }
            }
            _ => {}
        }
        (self.kind().to_owned(), attrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_put_their_fields_on_the_wire() {
        let (kind, attrs) = Output::image("r/x:y")
            .with_push(true)
            .with_attr("registry.insecure", "true")
            .wire();
        assert_eq!(kind, "image");
        assert_eq!(
            attrs,
            Attrs::from([
                ("name".into(), "r/x:y".into()),
                ("push".into(), "true".into()),
                ("registry.insecure".into(), "true".into()),
            ])
        );
        // The destination stays on the client; a layout says tar=false.
        assert_eq!(Output::local("out").wire(), ("local".into(), Attrs::new()));
        assert_eq!(
            Output::oci_layout("l").wire().1,
            Attrs::from([("tar".into(), "false".into())])
        );
        assert_eq!(Output::oci("a.tar").wire().1, Attrs::new());
        let raw = Output::raw("cacheonly", Attrs::from([("k".into(), "v".into())]));
        assert_eq!(raw.wire(), ("cacheonly".into(), raw.attrs().clone()));
        assert_eq!(raw.dest(), None);
    }

    #[test]
    fn a_local_cache_is_dest_when_exported_and_src_when_imported() {
        let cache = Cache::local("/c").with_attr("mode", "max");
        assert_eq!(
            cache.wire(CacheDirection::Export).1,
            Attrs::from([("dest".into(), "/c".into()), ("mode".into(), "max".into())])
        );
        assert_eq!(cache.wire(CacheDirection::Import).1["src"], "/c");
        let s3 = Cache::s3("b", "r").wire(CacheDirection::Export);
        assert_eq!(s3.0, "s3");
        assert_eq!(
            s3.1,
            Attrs::from([("bucket".into(), "b".into()), ("region".into(), "r".into())])
        );
        assert_eq!(
            Cache::registry("r/c:1").wire(CacheDirection::Import).1["ref"],
            "r/c:1"
        );
    }
}
