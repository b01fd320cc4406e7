//! The client's content stores for one build, set up as buildctl sets them up: which OCI
//! layout directories the session offers under which store ids, the attributes rewritten to
//! match (absolute paths, digests resolved from tags), and what is written to `index.json`
//! once the build succeeds.
//!
//! Every writable store ends exactly once: [`BuildStores::finish`] records the result and
//! releases it; anything else that ends the build (a failure, a cancelled or dropped future,
//! a daemon that went away) drops the [`RollbackOnDrop`] guard, which takes back what the
//! build wrote. The stores' own rules keep that safe when other builds share a directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::Value;

use super::build_error::BuildError;
use super::invalid::{InvalidOptions, StoreRole};
use super::oci_layout::{IndexName, LOCK_WAIT, LayoutError, LayoutStore, parse_digest};
use super::options::{BuildOptions, OCI_LAYOUT_SCHEME, check_flags, split_reference};
use super::output::Cache;

/// The store id of a `type=oci,tar=false` output directory (buildctl's).
const EXPORT_STORE_ID: &str = "export";
/// The exporter-response key holding the cache manifest's descriptor (JSON).
const CACHE_MANIFEST_KEY: &str = "cache.manifest";
/// The exporter-response key holding the image descriptor (base64 JSON).
const IMAGE_DESCRIPTOR_KEY: &str = "containerimage.descriptor";
/// The exporter-response key holding the image names (comma-separated).
const IMAGE_NAME_KEY: &str = "image.name";

/// The client-side content stores (OCI layout directories) of one build, and what each is for.
#[derive(Debug, Default)]
pub(crate) struct BuildStores {
    /// By store id, as the session offers them.
    pub(crate) by_id: BTreeMap<String, Arc<LayoutStore>>,
    /// Local cache destinations and the tag their `index.json` entry gets.
    cache_exports: Vec<(Arc<LayoutStore>, String)>,
    /// The OCI layout output, if any.
    oci_output: Option<Arc<LayoutStore>>,
}

/// The store's path made absolute, as the string the daemon names it by.
fn absolute_str(role: &StoreRole, path: &Path) -> Result<String, InvalidOptions> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    absolute
        .to_str()
        .map(str::to_owned)
        .ok_or_else(|| InvalidOptions::NotUtf8 {
            role: role.clone(),
            path: path.to_owned(),
        })
}

/// A store that cannot be used as `role`.
fn unusable(role: &StoreRole, path: &Path) -> impl FnOnce(LayoutError) -> InvalidOptions {
    move |source| InvalidOptions::Store {
        role: role.clone(),
        path: path.to_owned(),
        source,
    }
}

impl BuildStores {
    /// Opens every store the options name and returns the options as the daemon must see
    /// them: store paths absolute (the daemon names a local cache store by its path), cache
    /// import digests and `oci-layout://NAME:TAG` contexts resolved to digests. Fails, having
    /// written nothing, on a destination that is a file, a source that is not a layout, or
    /// a digest or tag the layout does not hold.
    pub(crate) fn prepare(
        options: &BuildOptions,
    ) -> Result<(BuildOptions, BuildStores), InvalidOptions> {
        check_flags(options)?;
        let mut resolved = options.clone();
        let mut stores = BuildStores::default();
        let lock_wait = options.store_lock_wait.unwrap_or(LOCK_WAIT);

        for cache in &mut resolved.cache_exports {
            let Cache::Local { path: dest, attrs } = cache else {
                continue;
            };
            let role = StoreRole::CacheExport;
            let path = absolute_str(&role, dest)?;
            let store = Arc::new(
                LayoutStore::for_writing(Path::new(&path))
                    .map_err(unusable(&role, dest))?
                    .with_lock_wait(lock_wait),
            );
            let tag = attrs.get("tag").cloned().unwrap_or_else(|| "latest".into());
            *dest = PathBuf::from(&path);
            stores.by_id.insert(format!("local:{path}"), store.clone());
            stores.cache_exports.push((store, tag));
        }

        for cache in &mut resolved.cache_imports {
            let Cache::Local { path: src, attrs } = cache else {
                continue;
            };
            let role = StoreRole::CacheImport;
            let path = absolute_str(&role, src)?;
            let reader =
                LayoutStore::for_reading(Path::new(&path)).map_err(unusable(&role, src))?;
            let digest = match attrs.get("digest") {
                Some(d) => d.clone(),
                None => {
                    let tag = attrs.get("tag").cloned().unwrap_or_else(|| "latest".into());
                    descriptor_digest(reader.resolve(&tag), &role, src)?
                }
            };
            reader.info(&digest).map_err(unusable(&role, src))?;
            *src = PathBuf::from(&path);
            attrs.insert("digest".into(), digest);
            // The same directory as a cache destination is one store, writable.
            stores
                .by_id
                .entry(format!("local:{path}"))
                .or_insert_with(|| Arc::new(reader));
        }

        for output in resolved.outputs.iter_mut().filter(|o| o.is_layout_dir()) {
            let role = StoreRole::LayoutOutput;
            let dest = output.dest().map(Path::to_owned).unwrap_or_default();
            let path = absolute_str(&role, &dest)?;
            let store = Arc::new(
                LayoutStore::for_writing(Path::new(&path))
                    .map_err(unusable(&role, &dest))?
                    .with_lock_wait(lock_wait),
            );
            output.set_dest(PathBuf::from(&path));
            stores.by_id.insert(EXPORT_STORE_ID.into(), store.clone());
            stores.oci_output = Some(store);
        }

        let mut layouts = BTreeMap::new();
        for (name, dir) in &options.oci_layouts {
            let role = StoreRole::OciLayout { name: name.clone() };
            let store = LayoutStore::for_reading(dir).map_err(unusable(&role, dir))?;
            let store = Arc::new(store);
            layouts.insert(name.clone(), store.clone());
            stores.by_id.insert(format!("oci:{name}"), store);
        }
        for (key, value) in resolved.frontend_attrs.iter_mut() {
            let Some(reference) = value.strip_prefix(OCI_LAYOUT_SCHEME) else {
                continue;
            };
            let (name, tag, digest) = split_reference(reference);
            let store = layouts
                .get(name)
                .ok_or_else(|| InvalidOptions::UnknownOciLayout {
                    key: key.clone(),
                    value: value.clone(),
                    name: name.to_owned(),
                })?;
            let role = StoreRole::OciLayout {
                name: name.to_owned(),
            };
            let digest = match digest {
                Some(d) => {
                    parse_digest(d).map_err(|source| InvalidOptions::OciLayoutDigest {
                        key: key.clone(),
                        value: value.clone(),
                        source,
                    })?;
                    d.to_owned()
                }
                None => {
                    descriptor_digest(store.resolve(tag.unwrap_or("latest")), &role, store.root())?
                }
            };
            store.info(&digest).map_err(unusable(&role, store.root()))?;
            *value = match tag {
                Some(tag) => format!("{OCI_LAYOUT_SCHEME}{name}:{tag}@{digest}"),
                None => format!("{OCI_LAYOUT_SCHEME}{name}@{digest}"),
            };
        }
        Ok((resolved, stores))
    }

    /// After a successful Solve: records the cache manifest and the image in the
    /// destinations' `index.json`, as buildctl does, then releases every store. Waits for
    /// `index.json.lock` (with a deadline): call it off the async runtime. On an error
    /// everything is taken back.
    pub(crate) fn finish(&self, response: &BTreeMap<String, String>) -> Result<(), BuildError> {
        self.record(response)?;
        for store in self.by_id.values().filter(|s| s.is_writable()) {
            store.release();
        }
        Ok(())
    }

    fn record(&self, response: &BTreeMap<String, String>) -> Result<(), BuildError> {
        if !self.cache_exports.is_empty() {
            match response.get(CACHE_MANIFEST_KEY) {
                Some(json) => {
                    let descriptor: Value = serde_json::from_str(json).map_err(|_| {
                        self.answer_unusable(
                            &self.cache_exports[0].0,
                            "the daemon's cache manifest descriptor is not JSON",
                        )
                    })?;
                    for (store, tag) in &self.cache_exports {
                        store
                            .put_index(&descriptor, &[IndexName::Tag(tag.clone())])
                            .map_err(|e| self.write_failed(store, e))?;
                    }
                }
                // With ignore-error=true a failed cache export is not a build failure.
                None => tracing::warn!(
                    "the daemon reported no cache manifest; local cache index not updated"
                ),
            }
        }
        if let Some(store) = &self.oci_output {
            let encoded = response.get(IMAGE_DESCRIPTOR_KEY).ok_or_else(|| {
                self.answer_unusable(store, "the daemon reported no image descriptor")
            })?;
            let descriptor: Value = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
                .and_then(|d| serde_json::from_slice(&d).ok())
                .ok_or_else(|| {
                    self.answer_unusable(store, "the daemon's image descriptor is malformed")
                })?;
            let names: Vec<IndexName> = match response.get(IMAGE_NAME_KEY) {
                Some(names) => names
                    .split(',')
                    .map(|n| IndexName::Name(n.to_owned()))
                    .collect(),
                None => vec![IndexName::Tag("latest".into())],
            };
            store
                .put_index(&descriptor, &names)
                .map_err(|e| self.write_failed(store, e))?;
        }
        Ok(())
    }

    fn write_failed(&self, store: &LayoutStore, source: LayoutError) -> BuildError {
        self.rollback();
        BuildError::Store {
            path: store.root().to_owned(),
            source,
        }
    }

    fn answer_unusable(&self, store: &LayoutStore, problem: &'static str) -> BuildError {
        self.rollback();
        BuildError::StoreAnswer {
            path: store.root().to_owned(),
            problem,
        }
    }

    /// The first write failure of any store, with the directory of that store.
    pub(crate) fn take_failure(&self) -> Option<(PathBuf, LayoutError)> {
        self.by_id
            .values()
            .find_map(|s| s.take_failure().map(|f| (s.root().to_owned(), f)))
    }

    /// Takes back what the build wrote into the stores (see [`LayoutStore::rollback`]).
    /// Never waits for a lock, so a guard's `drop` may call it.
    pub(crate) fn rollback(&self) {
        for store in self.by_id.values().filter(|s| s.is_writable()) {
            store.rollback();
        }
    }
}

/// Rolls the stores back when dropped, unless [`BuildStores::finish`] released them first
/// (a released store ignores the rollback): whatever ends a build, its stores end with it.
pub(crate) struct RollbackOnDrop(pub(crate) Arc<BuildStores>);

impl Drop for RollbackOnDrop {
    fn drop(&mut self) {
        self.0.rollback();
    }
}

/// The digest of an `index.json` entry of the store `path`, used as `role`.
fn descriptor_digest(
    entry: Result<Value, LayoutError>,
    role: &StoreRole,
    path: &Path,
) -> Result<String, InvalidOptions> {
    let descriptor = entry.map_err(unusable(role, path))?;
    descriptor
        .get("digest")
        .and_then(Value::as_str)
        .filter(|d| parse_digest(d).is_ok())
        .map(str::to_owned)
        .ok_or_else(|| InvalidOptions::NoDigest {
            role: role.clone(),
            path: path.to_owned(),
        })
}

/// Splits `NAME[:TAG][@DIGEST]`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_name_tag_digest() {
        assert_eq!(split_reference("base"), ("base", None, None));
        assert_eq!(split_reference("base:v1"), ("base", Some("v1"), None));
        assert_eq!(
            split_reference("base@sha256:ab"),
            ("base", None, Some("sha256:ab"))
        );
        assert_eq!(
            split_reference("org/base:v1@sha256:ab"),
            ("org/base", Some("v1"), Some("sha256:ab"))
        );
    }
}
