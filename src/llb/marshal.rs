//! Marshalling a graph into a [`Definition`] as Go's `State.Marshal` does: each op encoded,
//! the ops in a post-order walk from the result (inputs first, each op once), a terminal op
//! naming the result, per-op metadata with the caps the op needs, and an empty source map
//! entry per op.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::exec_options::{CacheSharing, MountKind, NetMode, SecurityMode};
use super::file_actions::{Chown, UserSpec};
use super::node::{ExecSpec, FileAction, FileSpec, Node, OpKind, Output, SourceSpec, State};
use super::{LlbError, Platform, wire};
use crate::buildkit::proto::pb;
use crate::setters::with_setters;

/// How a graph is marshalled.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MarshalOptions {
    /// The platform of ops that do not name one (Go's `llb.LinuxAmd64` and friends passed to
    /// `Marshal`).
    pub platform: Platform,
    /// The `local.unique` value of local sources that have none of their own. BuildKit uses
    /// it to tell transfers apart; Go picks a fresh random one on every Marshal, which makes
    /// local ops' digests change every time. Set it to make them reproducible.
    pub local_unique_id: String,
}

impl MarshalOptions {
    /// Marshalling for `platform`, with a fresh random local unique id (as Go does).
    pub fn for_platform(platform: Platform) -> Self {
        MarshalOptions {
            platform,
            local_unique_id: crate::buildkit::session::random_id(),
        }
    }

    /// Marshalling for the platform this program runs on (Go's default).
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Self::for_platform(Platform {
            architecture: arch.to_owned(),
            os: "linux".to_owned(),
            os_version: None,
            os_features: None,
            variant: (arch == "arm64").then(|| "v8".to_owned()),
        })
    }

    /// The same options with a fixed local unique id (Go's `llb.LocalUniqueID`).
    pub fn local_unique_id(self, id: impl Into<String>) -> Self {
        MarshalOptions {
            local_unique_id: id.into(),
            ..self
        }
    }
}

impl Default for MarshalOptions {
    fn default() -> Self {
        Self::host()
    }
}

/// A marshalled graph: the encoded ops (the last one, the terminal op, names the result) and
/// their metadata. [`Definition::to_pb`] is what a solve sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pb: pb::Definition,
}

impl Definition {
    /// The encoded ops with their digests, in Definition order (the terminal op last).
    pub fn ops(&self) -> impl Iterator<Item = (String, &Bytes)> {
        self.pb.def.iter().map(|op| (digest_of(op), op))
    }

    /// The terminal op's digest (the last op; Go's fixture files call it `terminal`).
    pub fn terminal(&self) -> String {
        self.pb
            .def
            .last()
            .map(|op| digest_of(op))
            .unwrap_or_default()
    }

    /// The wire Definition a `SolveRequest` carries.
    pub fn to_pb(&self) -> pb::Definition {
        self.pb.clone()
    }

    /// The wire Definition, consumed.
    pub fn into_pb(self) -> pb::Definition {
        self.pb
    }

    /// The metadata of the op with `digest`.
    pub fn metadata(&self, digest: &str) -> Option<&pb::OpMetadata> {
        self.pb.metadata.get(digest)
    }

    /// The Definition encoded as Go's deterministic marshalling encodes it (what a `.pb`
    /// file for `buildctl build` holds).
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode_definition(&self.pb)
    }

    /// Reads an encoded Definition (from Go or from [`Definition::to_bytes`]).
    ///
    /// # Errors
    /// [`LlbError::Decode`] when the bytes are not a Definition.
    pub fn from_bytes(bytes: &[u8]) -> Result<Definition, LlbError> {
        let pb = wire::decode_definition(bytes).map_err(|err| LlbError::Decode {
            problem: err.to_string(),
        })?;
        Ok(Definition { pb })
    }
}

impl From<pb::Definition> for Definition {
    fn from(pb: pb::Definition) -> Self {
        Definition { pb }
    }
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn digest_of(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

impl State {
    /// Marshals the graph that ends in this state.
    ///
    /// ```
    /// use pf_buildkit::llb::{self, MarshalOptions};
    /// let st = llb::scratch().file(llb::mkfile("/hello.txt", 0o644, "hello\n"));
    /// let def = st.marshal(&MarshalOptions::for_platform("linux/amd64".parse().unwrap())).unwrap();
    /// assert_eq!(
    ///     def.terminal(),
    ///     "sha256:7a50aaf85e0f61f206400e678597cee495be12a4f19e869a513962554c2deace",
    /// );
    /// ```
    ///
    /// # Errors
    /// A problem found in the graph: an image reference or command line that does not parse,
    /// a run step without arguments, a tmpfs mount on something other than scratch.
    pub fn marshal(&self, options: &MarshalOptions) -> Result<Definition, LlbError> {
        let mut m = Marshaller {
            options,
            done: HashMap::new(),
            def: Vec::new(),
            in_def: HashSet::new(),
            metadata: BTreeMap::new(),
            locations: BTreeMap::new(),
        };
        let Some(output) = &self.output else {
            // Scratch: Go returns an empty Definition.
            return Ok(Definition {
                pb: pb::Definition::default(),
            });
        };
        m.visit(&output.node)?;
        let terminal = pb::Op {
            inputs: vec![m.input(output)],
            ..Default::default()
        };
        let bytes = wire::encode_op(&terminal);
        let digest = digest_of(&bytes);
        let mut caps: BTreeMap<String, bool> = ["constraints", "platform"]
            .into_iter()
            .map(|c| (c.to_owned(), true))
            .collect();
        for meta in m.metadata.values() {
            if meta.ignore_cache {
                caps.insert("meta.ignorecache".into(), true);
            }
            if !meta.description.is_empty() {
                caps.insert("meta.description".into(), true);
            }
            if meta.export_cache.is_some() {
                caps.insert("meta.exportcache".into(), true);
            }
        }
        let entry = m.metadata.entry(digest).or_default();
        entry.caps.extend(caps);
        m.def.push(Bytes::from(bytes));
        Ok(Definition {
            pb: pb::Definition {
                def: m.def,
                metadata: m.metadata,
                source: Some(pb::Source {
                    locations: m.locations,
                    infos: Vec::new(),
                }),
            },
        })
    }
}

struct Marshaller<'a> {
    options: &'a MarshalOptions,
    /// Digest of every vertex marshalled so far, by identity.
    done: HashMap<*const Node, String>,
    def: Vec<Bytes>,
    /// Digests already in `def` (two vertices can marshal to the same op).
    in_def: HashSet<String>,
    metadata: BTreeMap<String, pb::OpMetadata>,
    locations: BTreeMap<String, pb::Locations>,
}

impl Marshaller<'_> {
    fn input(&self, output: &Output) -> pb::Input {
        pb::Input {
            digest: self.done[&Arc::as_ptr(&output.node)].clone(),
            index: output.index,
        }
    }

    /// Marshals the graph under `root` in post-order (each vertex after its inputs, in
    /// their order, each once). With an explicit stack, not recursion: a graph thousands of
    /// steps deep must not overflow a small thread stack.
    fn visit(&mut self, root: &Arc<Node>) -> Result<(), LlbError> {
        // (vertex, whether its inputs are already on the stack above it)
        let mut stack = vec![(root.clone(), false)];
        while let Some((node, inputs_pushed)) = stack.pop() {
            if self.done.contains_key(&Arc::as_ptr(&node)) {
                continue;
            }
            if inputs_pushed {
                self.emit(&node)?;
                continue;
            }
            stack.push((node.clone(), true));
            for input in walk_inputs(&node).into_iter().rev() {
                if !self.done.contains_key(&Arc::as_ptr(&input.node)) {
                    stack.push((input.node, false));
                }
            }
        }
        Ok(())
    }

    /// Marshals one vertex whose inputs are done.
    fn emit(&mut self, node: &Arc<Node>) -> Result<(), LlbError> {
        let (op, caps) = self.op(node)?;
        let bytes = wire::encode_op(&op);
        let digest = digest_of(&bytes);
        let meta = self.metadata.entry(digest.clone()).or_default();
        meta.caps
            .extend(caps.into_iter().map(|c| (c.to_owned(), true)));
        if let Some(name) = &node.options.custom_name {
            meta.description
                .insert("llb.customname".into(), name.clone());
        }
        meta.ignore_cache |= node.options.ignore_cache;
        self.locations.entry(digest.clone()).or_default();
        if self.in_def.insert(digest.clone()) {
            self.def.push(Bytes::from(bytes));
        }
        self.done.insert(Arc::as_ptr(node), digest);
        Ok(())
    }

    /// The op for `node` (its inputs already marshalled) and the caps it needs.
    fn op(&self, node: &Node) -> Result<(pb::Op, Vec<&'static str>), LlbError> {
        let mut op = pb::Op {
            constraints: Some(pb::WorkerConstraints::default()),
            ..Default::default()
        };
        let caps = match &node.kind {
            OpKind::Source(spec) => self.source(spec, &mut op)?,
            OpKind::Exec(spec) => self.exec(spec, &mut op)?,
            OpKind::File(spec) => self.file(spec, &mut op),
            OpKind::Merge(inputs) => {
                let mut merge = pb::MergeOp::default();
                for input in inputs {
                    merge.inputs.push(pb::MergeInput {
                        input: op.inputs.len() as i64,
                    });
                    op.inputs.push(self.input(input));
                }
                op.op = Some(pb::op::Op::Merge(merge));
                vec!["mergeop"]
            }
            OpKind::Diff { lower, upper } => {
                let mut side = |o: &Option<Output>| match o {
                    Some(o) => {
                        op.inputs.push(self.input(o));
                        op.inputs.len() as i64 - 1
                    }
                    None => -1,
                };
                let lower = side(lower);
                let upper = side(upper);
                op.op = Some(pb::op::Op::Diff(pb::DiffOp {
                    lower: Some(pb::LowerDiffInput { input: lower }),
                    upper: Some(pb::UpperDiffInput { input: upper }),
                }));
                vec!["diffop"]
            }
        };
        Ok((op, caps))
    }

    fn platform(&self, own: Option<&Platform>) -> pb::Platform {
        let p = own.unwrap_or(&self.options.platform);
        pb::Platform {
            architecture: p.architecture.clone(),
            os: p.os.clone(),
            variant: p.variant.clone().unwrap_or_default(),
            os_version: p.os_version.clone().unwrap_or_default(),
            os_features: p.os_features.clone().unwrap_or_default(),
        }
    }

    fn source(&self, spec: &SourceSpec, op: &mut pb::Op) -> Result<Vec<&'static str>, LlbError> {
        if let Some(err) = &spec.error {
            return Err(err.clone());
        }
        let mut caps = spec.caps.clone();
        let mut attrs = spec.attrs.clone();
        if spec.identifier.starts_with("local://") && !attrs.contains_key("local.session") {
            attrs
                .entry("local.unique".into())
                .or_insert_with(|| self.options.local_unique_id.clone());
            caps.push("source.local.unique");
        }
        // Only images (and OCI layouts) are platform-specific sources.
        if spec.identifier.starts_with("docker-image://")
            || spec.identifier.starts_with("oci-layout://")
        {
            op.platform = Some(self.platform(spec.platform.as_ref()));
        }
        op.op = Some(pb::op::Op::Source(pb::SourceOp {
            identifier: spec.identifier.clone(),
            attrs,
        }));
        Ok(caps)
    }

    fn exec(&self, spec: &ExecSpec, op: &mut pb::Op) -> Result<Vec<&'static str>, LlbError> {
        if let Some(err) = &spec.error {
            return Err(err.clone());
        }
        if spec.args.is_empty() {
            return Err(LlbError::NoArguments);
        }
        let mut caps = Vec::new();
        let network = match spec.network {
            NetMode::Sandbox => pb::NetMode::Unset,
            NetMode::Host => pb::NetMode::Host,
            NetMode::None => pb::NetMode::None,
        };
        let security = match spec.security {
            SecurityMode::Sandbox => pb::SecurityMode::Sandbox,
            SecurityMode::Insecure => pb::SecurityMode::Insecure,
        };
        if spec.network != NetMode::Sandbox {
            caps.push("exec.meta.network");
        }
        if spec.security != SecurityMode::Sandbox {
            caps.push("exec.meta.security");
        }
        caps.push("exec.meta.base");
        for m in &spec.mounts {
            if !m.selector().is_empty() {
                caps.push("exec.mount.selector");
            }
            match m.kind() {
                MountKind::Cache { .. } => {
                    caps.push("exec.mount.cache");
                    caps.push("exec.mount.cache.sharing");
                }
                MountKind::Tmpfs { size } => {
                    caps.push("exec.mount.tmpfs");
                    if *size > 0 {
                        caps.push("exec.mount.tmpfs.size");
                    }
                }
                MountKind::Bind if !m.source.is_scratch() => caps.push("exec.mount.bind"),
                MountKind::Bind => {}
            }
        }
        if !spec.secrets.is_empty() {
            caps.push("exec.mount.secret");
        }
        if !spec.ssh.is_empty() {
            caps.push("exec.mount.ssh");
        }
        op.platform = Some(self.platform(spec.platform.as_ref()));

        let mut mounts = Vec::new();
        let mut outputs = 0;
        for m in &spec.mounts {
            let input = match &m.source.output {
                Some(source) => {
                    let input = self.input(source);
                    match op.inputs.iter().position(|i| *i == input) {
                        Some(i) => i as i64,
                        None => {
                            op.inputs.push(input);
                            op.inputs.len() as i64 - 1
                        }
                    }
                }
                None => -1,
            };
            let mut pm = pb::Mount {
                input,
                selector: m.selector().to_owned(),
                dest: m.dest.clone(),
                output: -1,
                readonly: m.readonly(),
                ..Default::default()
            };
            match m.kind() {
                MountKind::Bind if !m.readonly() && !m.no_output() => {
                    pm.output = outputs;
                    outputs += 1;
                }
                MountKind::Bind => {}
                MountKind::Cache { id, sharing } => {
                    pm.set_mount_type(pb::MountType::Cache);
                    let mut cache = pb::CacheOpt {
                        id: id.clone(),
                        ..Default::default()
                    };
                    cache.set_sharing(match sharing {
                        CacheSharing::Shared => pb::CacheSharingOpt::Shared,
                        CacheSharing::Private => pb::CacheSharingOpt::Private,
                        CacheSharing::Locked => pb::CacheSharingOpt::Locked,
                    });
                    pm.cache_opt = Some(cache);
                }
                MountKind::Tmpfs { size } => {
                    pm.set_mount_type(pb::MountType::Tmpfs);
                    pm.tmpfs_opt = Some(pb::TmpfsOpt { size: *size });
                }
            }
            mounts.push(pm);
        }
        for (dest, s) in &spec.secrets {
            mounts.push(pb::Mount {
                input: -1,
                dest: dest.clone(),
                mount_type: pb::MountType::Secret as i32,
                secret_opt: Some(pb::SecretOpt {
                    id: s.id.clone(),
                    uid: s.uid,
                    gid: s.gid,
                    mode: s.mode,
                    optional: s.optional,
                }),
                ..Default::default()
            });
        }
        for s in &spec.ssh {
            mounts.push(pb::Mount {
                input: -1,
                dest: s.target.clone().unwrap_or_default(),
                mount_type: pb::MountType::Ssh as i32,
                ssh_opt: Some(pb::SshOpt {
                    id: s.id.clone(),
                    uid: s.uid,
                    gid: s.gid,
                    mode: s.mode,
                    optional: s.optional,
                }),
                ..Default::default()
            });
        }
        let mut exec = pb::ExecOp {
            meta: Some(pb::Meta {
                args: spec.args.clone(),
                env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                cwd: spec.cwd.clone(),
                user: spec.user.clone(),
                hostname: spec.hostname.clone(),
                remove_mount_stubs_recursive: true,
                ..Default::default()
            }),
            mounts,
            ..Default::default()
        };
        exec.set_network(network);
        exec.set_security(security);
        op.op = Some(pb::op::Op::Exec(exec));
        Ok(caps)
    }

    fn file(&self, spec: &FileSpec, op: &mut pb::Op) -> Vec<&'static str> {
        // Inputs in the order of first use: the state the actions apply to, then each copy's
        // source; equal inputs share an index.
        let add = |op: &mut pb::Op, o: &Option<Output>| -> i64 {
            let Some(o) = o else { return -1 };
            let input = self.input(o);
            match op.inputs.iter().position(|i| *i == input) {
                Some(i) => i as i64,
                None => {
                    op.inputs.push(input);
                    op.inputs.len() as i64 - 1
                }
            }
        };
        let mut actions = Vec::new();
        // (input, relative to an earlier action?) and the same for the secondary input.
        let mut refs = Vec::new();
        for (i, action) in spec.actions.iter().enumerate() {
            let base = add(op, &spec.base.output);
            let input = if i == 0 {
                (base, false)
            } else {
                (i as i64 - 1, true)
            };
            let secondary = match action {
                FileAction::Copy(c) => (add(op, &c.source.output), false),
                _ => (-1, false),
            };
            refs.push((input, secondary));
            actions.push(self.file_action(action, &spec.base.dir, base));
        }
        let inputs = op.inputs.len() as i64;
        let resolve =
            |(index, relative): (i64, bool)| if relative { inputs + index } else { index };
        let last = actions.len().saturating_sub(1);
        let actions = actions
            .into_iter()
            .zip(refs)
            .enumerate()
            .map(|(i, (action, (input, secondary)))| pb::FileAction {
                input: resolve(input),
                secondary_input: resolve(secondary),
                output: if i == last { 0 } else { -1 },
                action: Some(action),
            })
            .collect();
        op.op = Some(pb::op::Op::File(pb::FileOp { actions }));
        // Go asks for `file.base` only: it collects the copy-pattern caps before it has
        // walked the actions, so they never get in, and the metadata must match.
        vec!["file.base"]
    }

    fn file_action(&self, action: &FileAction, dir: &str, base: i64) -> pb::file_action::Action {
        use pb::file_action::Action;
        let owner = |o: &Option<Chown>| o.as_ref().map(|c| chown(c, base));
        match action {
            FileAction::Mkdir(a) => Action::Mkdir(pb::FileActionMkDir {
                path: normalize(dir, &a.path, false),
                mode: (a.mode & 0o777) as i32,
                make_parents: a.parents,
                owner: owner(&a.owner),
                timestamp: a.created.unwrap_or(-1),
            }),
            FileAction::Mkfile(a) => Action::Mkfile(pb::FileActionMkFile {
                path: normalize(dir, &a.path, false),
                mode: (a.mode & 0o777) as i32,
                data: Bytes::from(a.data.clone()),
                owner: owner(&a.owner),
                timestamp: a.created.unwrap_or(-1),
            }),
            FileAction::Rm(a) => Action::Rm(pb::FileActionRm {
                path: normalize(dir, &a.path, false),
                allow_not_found: a.allow_not_found,
                allow_wildcard: a.allow_wildcard,
            }),
            FileAction::Copy(a) => Action::Copy(pb::FileActionCopy {
                src: copy_source_path(&a.source.dir, &a.src),
                dest: normalize(dir, &a.dest, true),
                owner: owner(&a.owner),
                mode: a.mode.map_or(-1, |m| m as i32),
                follow_symlink: a.follow_symlinks,
                dir_copy_contents: a.contents_only,
                attempt_unpack_docker_compatibility: a.attempt_unpack,
                create_dest_path: a.create_dest_path,
                allow_wildcard: a.allow_wildcard,
                allow_empty_wildcard: a.allow_empty_wildcard,
                timestamp: a.created.unwrap_or(-1),
                include_patterns: a.include.clone(),
                exclude_patterns: a.exclude.clone(),
                always_replace_existing_dest_paths: a.always_replace,
                ..Default::default()
            }),
        }
    }
}

fn chown(c: &Chown, base: i64) -> pb::ChownOpt {
    let user = |u: &Option<UserSpec>| {
        u.as_ref().map(|u| pb::UserOpt {
            user: Some(match u {
                UserSpec::Id(id) => pb::user_opt::User::ById(*id),
                UserSpec::Name(name) => pb::user_opt::User::ByName(pb::NamedUserOpt {
                    name: name.clone(),
                    input: base,
                }),
            }),
        })
    };
    pb::ChownOpt {
        user: user(&c.user),
        group: user(&c.group),
    }
}

/// A file action's path made absolute against the state's directory; a destination keeps a
/// trailing `/` or `/.` (they mean "into this directory").
fn normalize(dir: &str, path: &str, keep_slash: bool) -> String {
    let mut p = super::state::join_path(dir, path);
    if keep_slash {
        if path.ends_with('/') && !p.ends_with('/') {
            p.push('/');
        } else if path.ends_with("/.") {
            if p != "/" {
                p.push('/');
            }
            p.push('.');
        }
    }
    p
}

/// A copy's source path, against the source state's directory (Go: `path.Join(dir,
/// path.Clean(src))`).
fn copy_source_path(dir: &str, src: &str) -> String {
    let cleaned = super::state::clean_path(src);
    if cleaned.starts_with('/') {
        cleaned
    } else {
        super::state::join_path(dir, &cleaned)
    }
}

/// The inputs of a vertex in the order Go's `Vertex.Inputs` lists them, which decides the
/// order of ops in the Definition.
fn walk_inputs(node: &Node) -> Vec<Output> {
    let mut out: Vec<Output> = Vec::new();
    let mut push = |o: &Option<Output>| {
        if let Some(o) = o
            && !out.iter().any(|seen| seen.same(o))
        {
            out.push(o.clone());
        }
    };
    match &node.kind {
        OpKind::Source(_) => {}
        OpKind::Exec(spec) => {
            for m in &spec.mounts {
                push(&m.source.output);
            }
        }
        OpKind::File(spec) => {
            // The last action first: its base, its copy source, then the one before.
            for action in spec.actions.iter().rev() {
                push(&spec.base.output);
                if let FileAction::Copy(c) = action {
                    push(&c.source.output);
                }
            }
        }
        OpKind::Merge(inputs) => return inputs.clone(),
        OpKind::Diff { lower, upper } => {
            push(lower);
            push(upper);
        }
    }
    out
}

with_setters!(MarshalOptions {
    with_platform => platform: Platform,
    with_local_unique_id => local_unique_id: String,
});

#[cfg(test)]
mod tests {
    use super::*;

    /// A graph far deeper than any real one marshals on a thread with a small stack.
    #[test]
    fn deep_graphs_marshal_without_deep_recursion() {
        let handle = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let mut st = crate::llb::scratch();
                for i in 0..20_000 {
                    st = st.file(crate::llb::mkfile(format!("/f{i}"), 0o644, "x"));
                }
                let options = MarshalOptions::for_platform("linux/amd64".parse().unwrap());
                st.marshal(&options).unwrap().ops().count()
            })
            .unwrap();
        assert_eq!(handle.join().unwrap(), 20_001);
    }
}
