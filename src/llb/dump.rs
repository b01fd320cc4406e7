//! A Definition as JSON lines, one per op, the way `buildctl debug dump-llb` prints it: Go's
//! `encoding/json` of `{Op, Digest, OpMetadata}`, so field names are the proto names, fields
//! come in declaration order, zero values are left out, enums and 64-bit numbers are plain
//! numbers, bytes are base64, and the op body sits under `"Op"` (`"Action"` in a file action,
//! `"User"` in an owner).

use base64::Engine as _;

use super::marshal::digest_of;
use super::{Definition, LlbError, gojson};
use crate::buildkit::proto::pb;

/// The JSON lines (each ending in `\n`) for every op of an encoded Definition, in order.
///
/// ```
/// use pf_buildkit::llb::{self, MarshalOptions};
/// let def = llb::scratch()
///     .file(llb::mkfile("/n", 0o644, "n"))
///     .marshal(&MarshalOptions::for_platform("linux/amd64".parse().unwrap()))
///     .unwrap();
/// let lines = llb::dump_json_lines(&def.to_bytes()).unwrap();
/// assert!(lines[0].starts_with(r#"{"Op":{"Op":{"file":{"actions":[{"input":-1,"#));
/// ```
///
/// # Errors
/// [`LlbError::Decode`] when the bytes are not a Definition or an op does not decode.
pub fn dump_json_lines(definition: &[u8]) -> Result<Vec<String>, LlbError> {
    let def = Definition::from_bytes(definition)?.into_pb();
    let mut lines = Vec::with_capacity(def.def.len());
    for (n, bytes) in def.def.iter().enumerate() {
        let op =
            <pb::Op as prost::Message>::decode(bytes.as_ref()).map_err(|err| LlbError::Decode {
                problem: format!("op {n}: {err}"),
            })?;
        let digest = digest_of(bytes);
        let meta = def.metadata.get(&digest).cloned().unwrap_or_default();
        let mut line = Obj::new();
        line.always("Op", op_json(&op));
        line.always("Digest", gojson::string(&digest));
        line.always("OpMetadata", metadata_json(&meta));
        let mut text = gojson::go_escape(line.finish());
        text.push('\n');
        lines.push(text);
    }
    Ok(lines)
}

/// A JSON object written field by field, in order.
struct Obj {
    out: String,
}

impl Obj {
    fn new() -> Self {
        Obj {
            out: String::from("{"),
        }
    }

    fn always(&mut self, key: &str, value: String) -> &mut Self {
        if self.out.len() > 1 {
            self.out.push(',');
        }
        self.out.push_str(&gojson::string(key));
        self.out.push(':');
        self.out.push_str(&value);
        self
    }

    fn str(&mut self, key: &str, value: &str) -> &mut Self {
        if !value.is_empty() {
            self.always(key, gojson::string(value));
        }
        self
    }

    fn num<T: Copy + Default + PartialEq + ToString>(&mut self, key: &str, value: T) -> &mut Self {
        if value != T::default() {
            self.always(key, value.to_string());
        }
        self
    }

    fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        if value {
            self.always(key, "true".into());
        }
        self
    }

    fn bytes(&mut self, key: &str, value: &[u8]) -> &mut Self {
        if !value.is_empty() {
            let b64 = base64::engine::general_purpose::STANDARD.encode(value);
            self.always(key, gojson::string(&b64));
        }
        self
    }

    fn msg<T>(&mut self, key: &str, value: Option<&T>, f: fn(&T) -> String) -> &mut Self {
        if let Some(v) = value {
            self.always(key, f(v));
        }
        self
    }

    fn list<T>(&mut self, key: &str, items: &[T], f: fn(&T) -> String) -> &mut Self {
        if !items.is_empty() {
            let parts: Vec<String> = items.iter().map(f).collect();
            self.always(key, format!("[{}]", parts.join(",")));
        }
        self
    }

    fn strings(&mut self, key: &str, items: &[String]) -> &mut Self {
        self.list(key, items, |s| gojson::string(s))
    }

    fn map<V>(
        &mut self,
        key: &str,
        map: &std::collections::BTreeMap<String, V>,
        f: fn(&V) -> String,
    ) -> &mut Self {
        if !map.is_empty() {
            let mut o = Obj::new();
            for (k, v) in map {
                o.always(k, f(v));
            }
            self.always(key, o.finish());
        }
        self
    }

    fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.out);
        out.push('}');
        out
    }
}

fn op_json(op: &pb::Op) -> String {
    use pb::op::Op as Body;
    let mut body = Obj::new();
    match &op.op {
        Some(Body::Exec(e)) => body.always("exec", exec_json(e)),
        Some(Body::Source(s)) => body.always("source", source_json(s)),
        Some(Body::File(f)) => body.always("file", file_json(f)),
        Some(Body::Build(b)) => body.always("build", build_json(b)),
        Some(Body::Merge(m)) => body.always("merge", merge_json(m)),
        Some(Body::Diff(d)) => body.always("diff", diff_json(d)),
        Some(Body::Passthrough(p)) => body.always("passthrough", passthrough_json(p)),
        None => &mut body,
    };
    Obj::new()
        .list("inputs", &op.inputs, input_json)
        .always("Op", body.finish())
        .msg("platform", op.platform.as_ref(), platform_json)
        .msg("constraints", op.constraints.as_ref(), |c| {
            Obj::new().strings("filter", &c.filter).finish()
        })
        .finish()
}

fn input_json(i: &pb::Input) -> String {
    Obj::new()
        .str("digest", &i.digest)
        .num("index", i.index)
        .finish()
}

fn platform_json(p: &pb::Platform) -> String {
    Obj::new()
        .str("Architecture", &p.architecture)
        .str("OS", &p.os)
        .str("Variant", &p.variant)
        .str("OSVersion", &p.os_version)
        .strings("OSFeatures", &p.os_features)
        .finish()
}

fn exec_json(e: &pb::ExecOp) -> String {
    Obj::new()
        .msg("meta", e.meta.as_ref(), meta_json)
        .list("mounts", &e.mounts, mount_json)
        .num("network", e.network)
        .num("security", e.security)
        .list("secretenv", &e.secretenv, |s| {
            Obj::new()
                .str("ID", &s.id)
                .str("name", &s.name)
                .bool("optional", s.optional)
                .finish()
        })
        .list("cdiDevices", &e.cdi_devices, |d| {
            Obj::new()
                .str("name", &d.name)
                .bool("optional", d.optional)
                .finish()
        })
        .finish()
}

fn meta_json(m: &pb::Meta) -> String {
    Obj::new()
        .strings("args", &m.args)
        .strings("env", &m.env)
        .str("cwd", &m.cwd)
        .str("user", &m.user)
        .msg("proxy_env", m.proxy_env.as_ref(), |p| {
            Obj::new()
                .str("http_proxy", &p.http_proxy)
                .str("https_proxy", &p.https_proxy)
                .str("ftp_proxy", &p.ftp_proxy)
                .str("no_proxy", &p.no_proxy)
                .str("all_proxy", &p.all_proxy)
                .finish()
        })
        .list("extraHosts", &m.extra_hosts, |h| {
            Obj::new().str("Host", &h.host).str("IP", &h.ip).finish()
        })
        .str("hostname", &m.hostname)
        .list("ulimit", &m.ulimit, |u| {
            Obj::new()
                .str("Name", &u.name)
                .num("Soft", u.soft)
                .num("Hard", u.hard)
                .finish()
        })
        .str("cgroupParent", &m.cgroup_parent)
        .bool("removeMountStubsRecursive", m.remove_mount_stubs_recursive)
        .list("validExitCodes", &m.valid_exit_codes, |c| c.to_string())
        .finish()
}

fn mount_json(m: &pb::Mount) -> String {
    fn secret_like(id: &str, uid: u32, gid: u32, mode: u32, optional: bool) -> String {
        Obj::new()
            .str("ID", id)
            .num("uid", uid)
            .num("gid", gid)
            .num("mode", mode)
            .bool("optional", optional)
            .finish()
    }
    Obj::new()
        .num("input", m.input)
        .str("selector", &m.selector)
        .str("dest", &m.dest)
        .num("output", m.output)
        .bool("readonly", m.readonly)
        .num("mountType", m.mount_type)
        .msg("TmpfsOpt", m.tmpfs_opt.as_ref(), |t| {
            Obj::new().num("size", t.size).finish()
        })
        .msg("cacheOpt", m.cache_opt.as_ref(), |c| {
            Obj::new()
                .str("ID", &c.id)
                .num("sharing", c.sharing)
                .finish()
        })
        .msg("secretOpt", m.secret_opt.as_ref(), |s| {
            secret_like(&s.id, s.uid, s.gid, s.mode, s.optional)
        })
        .msg("SSHOpt", m.ssh_opt.as_ref(), |s| {
            secret_like(&s.id, s.uid, s.gid, s.mode, s.optional)
        })
        .str("resultID", &m.result_id)
        .num("contentCache", m.content_cache)
        .finish()
}

fn source_json(s: &pb::SourceOp) -> String {
    Obj::new()
        .str("identifier", &s.identifier)
        .map("attrs", &s.attrs, |v| gojson::string(v))
        .finish()
}

fn build_json(b: &pb::BuildOp) -> String {
    Obj::new()
        .num("builder", b.builder)
        .map("inputs", &b.inputs, |i| {
            Obj::new().num("input", i.input).finish()
        })
        .msg("def", b.def.as_ref(), |d| {
            Obj::new()
                .list("def", &d.def, |op| {
                    gojson::string(&base64::engine::general_purpose::STANDARD.encode(op))
                })
                .map("metadata", &d.metadata, metadata_json)
                .finish()
        })
        .map("attrs", &b.attrs, |v| gojson::string(v))
        .finish()
}

fn merge_json(m: &pb::MergeOp) -> String {
    Obj::new()
        .list("inputs", &m.inputs, |i| {
            Obj::new().num("input", i.input).finish()
        })
        .finish()
}

fn diff_json(d: &pb::DiffOp) -> String {
    Obj::new()
        .msg("lower", d.lower.as_ref(), |l| {
            Obj::new().num("input", l.input).finish()
        })
        .msg("upper", d.upper.as_ref(), |u| {
            Obj::new().num("input", u.input).finish()
        })
        .finish()
}

fn passthrough_json(p: &pb::PassthroughOp) -> String {
    Obj::new()
        .str("id", &p.id)
        .list("outputs", &p.outputs, |o| o.to_string())
        .finish()
}

fn file_json(f: &pb::FileOp) -> String {
    Obj::new().list("actions", &f.actions, action_json).finish()
}

fn action_json(a: &pb::FileAction) -> String {
    use pb::file_action::Action;
    let mut body = Obj::new();
    match &a.action {
        Some(Action::Copy(c)) => body.always("copy", copy_json(c)),
        Some(Action::Mkfile(m)) => body.always(
            "mkfile",
            Obj::new()
                .str("path", &m.path)
                .num("mode", m.mode)
                .bytes("data", &m.data)
                .msg("owner", m.owner.as_ref(), chown_json)
                .num("timestamp", m.timestamp)
                .finish(),
        ),
        Some(Action::Mkdir(m)) => body.always(
            "mkdir",
            Obj::new()
                .str("path", &m.path)
                .num("mode", m.mode)
                .bool("makeParents", m.make_parents)
                .msg("owner", m.owner.as_ref(), chown_json)
                .num("timestamp", m.timestamp)
                .finish(),
        ),
        Some(Action::Rm(r)) => body.always(
            "rm",
            Obj::new()
                .str("path", &r.path)
                .bool("allowNotFound", r.allow_not_found)
                .bool("allowWildcard", r.allow_wildcard)
                .finish(),
        ),
        Some(Action::Symlink(s)) => body.always(
            "symlink",
            Obj::new()
                .str("oldpath", &s.oldpath)
                .str("newpath", &s.newpath)
                .msg("owner", s.owner.as_ref(), chown_json)
                .num("timestamp", s.timestamp)
                .finish(),
        ),
        None => &mut body,
    };
    // Go's file action JSON always writes the three indexes.
    Obj::new()
        .always("input", a.input.to_string())
        .always("secondaryInput", a.secondary_input.to_string())
        .always("output", a.output.to_string())
        .always("Action", body.finish())
        .finish()
}

fn copy_json(c: &pb::FileActionCopy) -> String {
    Obj::new()
        .str("src", &c.src)
        .str("dest", &c.dest)
        .msg("owner", c.owner.as_ref(), chown_json)
        .num("mode", c.mode)
        .bool("followSymlink", c.follow_symlink)
        .bool("dirCopyContents", c.dir_copy_contents)
        .bool(
            "attemptUnpackDockerCompatibility",
            c.attempt_unpack_docker_compatibility,
        )
        .bool("createDestPath", c.create_dest_path)
        .bool("allowWildcard", c.allow_wildcard)
        .bool("allowEmptyWildcard", c.allow_empty_wildcard)
        .num("timestamp", c.timestamp)
        .strings("include_patterns", &c.include_patterns)
        .strings("exclude_patterns", &c.exclude_patterns)
        .bool(
            "alwaysReplaceExistingDestPaths",
            c.always_replace_existing_dest_paths,
        )
        .str("modeStr", &c.mode_str)
        .strings("required_paths", &c.required_paths)
        .finish()
}

fn chown_json(c: &pb::ChownOpt) -> String {
    fn user_json(u: &pb::UserOpt) -> String {
        let mut user = Obj::new();
        match &u.user {
            Some(pb::user_opt::User::ByName(n)) => user.always(
                "byName",
                Obj::new()
                    .str("name", &n.name)
                    .num("input", n.input)
                    .finish(),
            ),
            Some(pb::user_opt::User::ById(id)) => user.num("byId", *id),
            None => &mut user,
        };
        Obj::new().always("User", user.finish()).finish()
    }
    Obj::new()
        .msg("user", c.user.as_ref(), user_json)
        .msg("group", c.group.as_ref(), user_json)
        .finish()
}

fn metadata_json(m: &pb::OpMetadata) -> String {
    Obj::new()
        .bool("ignore_cache", m.ignore_cache)
        .map("description", &m.description, |v| gojson::string(v))
        .msg("export_cache", m.export_cache.as_ref(), |e| {
            Obj::new().bool("Value", e.value).finish()
        })
        .map("caps", &m.caps, |v| v.to_string())
        .msg("progress_group", m.progress_group.as_ref(), |g| {
            Obj::new()
                .str("id", &g.id)
                .str("name", &g.name)
                .bool("weak", g.weak)
                .finish()
        })
        .msg("linux_resources", m.linux_resources.as_ref(), |r| {
            Obj::new()
                .num("memory", r.memory)
                .num("memorySwap", r.memory_swap)
                .num("cpuShares", r.cpu_shares)
                .num("cpuPeriod", r.cpu_period)
                .num("cpuQuota", r.cpu_quota)
                .str("cpusetCpus", &r.cpuset_cpus)
                .str("cpusetMems", &r.cpuset_mems)
                .finish()
        })
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llb::{self, Chown, MarshalOptions};

    fn lines(state: &llb::State) -> Vec<String> {
        let options = MarshalOptions::for_platform("linux/amd64".parse().unwrap());
        dump_json_lines(&state.marshal(&options).unwrap().to_bytes()).unwrap()
    }

    #[test]
    fn owners_and_indexes_are_written_as_gos_json_go_does() {
        let src = llb::scratch().file(llb::mkfile("/a", 0o600, "a"));
        let st = llb::scratch().file(
            llb::copy(&src, "/a", "/b/")
                .owner(Chown::parse("app:10"))
                .mode(0o640),
        );
        let out = lines(&st);
        assert_eq!(out.len(), 3);
        assert!(
            out[1].contains(
                r#"{"input":-1,"secondaryInput":0,"output":0,"Action":{"copy":{"src":"/a","dest":"/b/","owner":{"user":{"User":{"byName":{"name":"app","input":-1}}},"group":{"User":{"byId":10}}},"mode":416,"timestamp":-1}}}"#
            ),
            "{}",
            out[1]
        );
        assert!(out[0].contains(r#""data":"YQ==""#), "{}", out[0]);
        assert!(out[2].ends_with("}\n"));
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let err = dump_json_lines(b"\xff\xff\xff").unwrap_err();
        assert!(matches!(err, LlbError::Decode { .. }), "{err:?}");
    }
}
