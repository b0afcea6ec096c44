//! The config file as a tree of positioned YAML nodes, and what ejabberd does
//! to it before reading options: `include_config_file`, `define_macro`
//! (plus `EJABBERD_MACRO_<NAME>` environment variables) and — Palaver's
//! addition — `${VAR}` environment substitution in string values.

use super::ConfigError;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Where a node is: which file (index into [`Files`]), line and column (1-based; 0 unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pos {
    pub file: usize,
    pub line: u64,
    pub col: u64,
}

/// A YAML value.
#[derive(Debug, Clone)]
pub(crate) enum V {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// A YAML value and where it was written.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub v: V,
    pub pos: Pos,
}

impl Node {
    pub fn new(v: V, pos: Pos) -> Node {
        Node { v, pos }
    }
    /// A scalar's text (`None` for collections and null).
    pub fn scalar(&self) -> Option<String> {
        match &self.v {
            V::Str(s) => Some(s.clone()),
            V::Int(i) => Some(i.to_string()),
            V::Float(f) => Some(f.to_string()),
            V::Bool(b) => Some(b.to_string()),
            V::Null | V::Seq(_) | V::Map(_) => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match &self.v {
            V::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn kind(&self) -> &'static str {
        match &self.v {
            V::Null => "nothing",
            V::Bool(_) => "a boolean",
            V::Int(_) => "an integer",
            V::Float(_) => "a number",
            V::Str(_) => "a string",
            V::Seq(_) => "a list",
            V::Map(_) => "a mapping",
        }
    }
    /// A node from JSON (module options read back), without a position.
    pub fn from_json(v: &serde_json::Value) -> Node {
        use serde_json::Value as J;
        let v = match v {
            J::Null => V::Null,
            J::Bool(b) => V::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => V::Int(i),
                None => V::Float(n.as_f64().unwrap_or(0.0)),
            },
            J::String(s) => V::Str(s.clone()),
            J::Array(items) => V::Seq(items.iter().map(Node::from_json).collect()),
            J::Object(m) => V::Map(
                m.iter()
                    .map(|(k, v)| {
                        (
                            Node::new(V::Str(k.clone()), Pos::default()),
                            Node::from_json(v),
                        )
                    })
                    .collect(),
            ),
        };
        Node::new(v, Pos::default())
    }

    /// Convert to JSON (module options): map keys become strings.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.v {
            V::Null => J::Null,
            V::Bool(b) => J::Bool(*b),
            V::Int(i) => J::from(*i),
            V::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or(J::Null),
            V::Str(s) => J::String(s.clone()),
            V::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            V::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.scalar().unwrap_or_default(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// The files a configuration was read from (index 0: the main file).
#[derive(Debug, Clone, Default)]
pub(crate) struct Files(pub Vec<Option<PathBuf>>);

impl Files {
    /// "line 3, column 5" or "other.yml, line 3, column 5" for included files.
    pub fn describe(&self, pos: Pos) -> String {
        let at = if pos.col > 0 {
            format!("line {}, column {}", pos.line, pos.col)
        } else {
            format!("line {}", pos.line)
        };
        match self.0.get(pos.file) {
            Some(Some(p)) if pos.file > 0 => format!("{}, {at}", p.display()),
            _ => at,
        }
    }
}

// ---- reading YAML through serde-saphyr, keeping positions and order ----

enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<Raw>, Spanned<Raw>)>),
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(i64::try_from(v).map_or(Raw::Float(v as f64), Raw::Int))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Raw, E> {
        Ok(i64::try_from(v).map_or(Raw::Float(v as f64), Raw::Int))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Raw, E> {
        Ok(i64::try_from(v).map_or(Raw::Float(v as f64), Raw::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_char<E>(self, v: char) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_string()))
    }
    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<Spanned<Raw>>()? {
            let v = map.next_value::<Spanned<Raw>>()?;
            entries.push((k, v));
        }
        Ok(Raw::Map(entries))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Raw, E> {
        Ok(Raw::Str(String::from_utf8_lossy(v).into_owned()))
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

fn to_node(s: Spanned<Raw>, file: usize) -> Node {
    let pos = Pos {
        file,
        line: s.referenced.line(),
        col: s.referenced.column(),
    };
    let v = match s.value {
        Raw::Null => V::Null,
        Raw::Bool(b) => V::Bool(b),
        Raw::Int(i) => V::Int(i),
        Raw::Float(f) => V::Float(f),
        Raw::Str(s) => V::Str(s),
        Raw::Seq(items) => V::Seq(items.into_iter().map(|i| to_node(i, file)).collect()),
        Raw::Map(entries) => V::Map(
            entries
                .into_iter()
                .map(|(k, v)| (to_node(k, file), to_node(v, file)))
                .collect(),
        ),
    };
    Node { v, pos }
}

/// Parse one YAML document (empty text is null).
pub(crate) fn parse_text(text: &str, file: usize, files: &Files) -> Result<Node, ConfigError> {
    let blank = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---");
    if blank {
        return Ok(Node::new(
            V::Null,
            Pos {
                file,
                line: 1,
                col: 1,
            },
        ));
    }
    let raw: Spanned<Raw> = serde_saphyr::from_str(text).map_err(|e| {
        let name = match files.0.get(file) {
            Some(Some(p)) if file > 0 => format!("{}: ", p.display()),
            _ => String::new(),
        };
        ConfigError::msg(format!("{name}{e}"))
    })?;
    Ok(to_node(raw, file))
}

// ---- include_config_file ----

/// Read the top-level entries of `root`, splicing in `include_config_file`s
/// (relative paths resolve against the including file's directory).
pub(crate) fn top_entries(
    root: Node,
    files: &mut Files,
    depth: usize,
    stack: &mut Vec<PathBuf>,
) -> Result<Vec<(Node, Node)>, ConfigError> {
    let entries = match root.v {
        V::Map(e) => e,
        V::Null => Vec::new(),
        _ => {
            return Err(ConfigError::msg(format!(
                "{}: the configuration must be a mapping of options, not {}",
                files.describe(root.pos),
                root.kind()
            )));
        }
    };
    let mut out = Vec::new();
    for (k, v) in entries {
        if k.as_str() != Some("include_config_file") {
            out.push((k, v));
            continue;
        }
        let base = files
            .0
            .get(k.pos.file)
            .cloned()
            .flatten()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        for (path_node, allow_only, disallow) in include_list(&v, files)? {
            let Some(rel) = path_node.as_str() else {
                return Err(bad(files, "include_config_file", &path_node, "a file name"));
            };
            let path = match &base {
                Some(b) if Path::new(rel).is_relative() => b.join(rel),
                _ => PathBuf::from(rel),
            };
            let canon = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            if stack.contains(&canon) || depth > 16 {
                return Err(ConfigError::msg(format!(
                    "config key `include_config_file` ({}): {} includes itself",
                    files.describe(path_node.pos),
                    path.display()
                )));
            }
            let text = super::read_config_file(&path).map_err(|e| {
                ConfigError::msg(format!(
                    "config key `include_config_file` ({}): cannot read {}: {e}",
                    files.describe(path_node.pos),
                    path.display()
                ))
            })?;
            files.0.push(Some(path.clone()));
            let idx = files.0.len() - 1;
            let node = parse_text(&text, idx, files)?;
            stack.push(canon);
            let inner = top_entries(node, files, depth + 1, stack)?;
            stack.pop();
            for (ik, iv) in inner {
                let name = ik.scalar().unwrap_or_default();
                let keep = match &allow_only {
                    Some(list) => list.contains(&name),
                    None => !disallow.contains(&name),
                };
                if keep {
                    out.push((ik, iv));
                }
            }
        }
    }
    Ok(out)
}

type Include = (Node, Option<Vec<String>>, Vec<String>);

/// `include_config_file`: a file, a list of files, or `{file: {allow_only, disallow}}`.
fn include_list(v: &Node, files: &Files) -> Result<Vec<Include>, ConfigError> {
    let names = |n: &Node, key: &str| -> Result<Vec<String>, ConfigError> {
        match &n.v {
            V::Seq(items) => items
                .iter()
                .map(|i| {
                    i.scalar()
                        .ok_or_else(|| bad(files, key, i, "an option name"))
                })
                .collect(),
            _ => n
                .scalar()
                .map(|s| vec![s])
                .ok_or_else(|| bad(files, key, n, "a list of option names")),
        }
    };
    match &v.v {
        V::Str(_) => Ok(vec![(v.clone(), None, Vec::new())]),
        V::Seq(items) => Ok(items
            .iter()
            .map(|i| (i.clone(), None, Vec::new()))
            .collect()),
        V::Map(entries) => {
            let mut out = Vec::new();
            for (file, opts) in entries {
                let mut allow_only = None;
                let mut disallow = Vec::new();
                if let V::Map(o) = &opts.v {
                    for (ok, ov) in o {
                        match ok.as_str() {
                            Some("allow_only") => {
                                allow_only = Some(names(ov, "include_config_file.allow_only")?)
                            }
                            Some("disallow") => {
                                disallow = names(ov, "include_config_file.disallow")?
                            }
                            _ => {
                                return Err(bad(
                                    files,
                                    "include_config_file",
                                    ok,
                                    "`allow_only` or `disallow`",
                                ));
                            }
                        }
                    }
                } else if !matches!(opts.v, V::Null) {
                    return Err(bad(
                        files,
                        "include_config_file",
                        opts,
                        "a mapping with `allow_only` or `disallow`",
                    ));
                }
                out.push((file.clone(), allow_only, disallow));
            }
            Ok(out)
        }
        _ => Err(bad(
            files,
            "include_config_file",
            v,
            "a file name or a list",
        )),
    }
}

/// "config key `k` (line …): expected X, found Y".
pub(crate) fn bad(files: &Files, key: &str, n: &Node, expected: &str) -> ConfigError {
    ConfigError::msg(format!(
        "config key `{key}` ({}): expected {expected}, found {}",
        files.describe(n.pos),
        match n.scalar() {
            Some(s) => format!("`{s}`"),
            None => n.kind().to_string(),
        }
    ))
}

// ---- ${VAR} environment substitution ----

/// Replace `${NAME}` in every string value (not keys) with the environment
/// variable NAME; `$${` stands for a literal `${`. A missing variable is an error.
pub(crate) fn substitute_env(
    n: &mut Node,
    path: &str,
    files: &Files,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match &mut n.v {
        V::Str(s) if s.contains("${") => {
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(i) = rest.find("${") {
                if rest[..i].ends_with('$') {
                    out.push_str(&rest[..i - 1]);
                    out.push_str("${");
                    rest = &rest[i + 2..];
                    continue;
                }
                out.push_str(&rest[..i]);
                let after = &rest[i + 2..];
                let Some(end) = after.find('}') else {
                    out.push_str(&rest[i..]);
                    rest = "";
                    break;
                };
                let name = &after[..end];
                let valid = !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !name.starts_with(|c: char| c.is_ascii_digit());
                if !valid {
                    out.push_str(&rest[i..i + 3 + end]);
                } else {
                    let val = env(name).ok_or_else(|| {
                        ConfigError::msg(format!(
                            "config key `{path}` ({}): environment variable `{name}` is not set",
                            files.describe(n.pos)
                        ))
                    })?;
                    out.push_str(&val);
                }
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        V::Seq(items) => {
            for i in items {
                substitute_env(i, path, files, env)?;
            }
        }
        V::Map(entries) => {
            for (k, v) in entries {
                let p = match k.scalar() {
                    Some(ks) if path.is_empty() => ks,
                    Some(ks) => format!("{path}.{ks}"),
                    None => path.to_string(),
                };
                substitute_env(v, &p, files, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

// ---- define_macro ----

/// ejabberd's macros: a value equal to a macro's name is replaced by the
/// macro's value (any YAML); `@NAME@` inside a string is replaced by a scalar
/// macro's text. Keys are never replaced.
pub(crate) struct Macros {
    defs: Vec<(String, Node)>,
}

impl Macros {
    /// Take every `define_macro` entry out of `entries` (plus
    /// `EJABBERD_MACRO_<NAME>=value` from `env_vars`, which override).
    pub fn take(
        entries: &mut Vec<(Node, Node)>,
        env_vars: &[(String, String)],
        files: &Files,
    ) -> Result<Macros, ConfigError> {
        let mut defs: Vec<(String, Node)> = Vec::new();
        let mut rest = Vec::with_capacity(entries.len());
        for (k, v) in entries.drain(..) {
            if k.as_str() != Some("define_macro") {
                rest.push((k, v));
                continue;
            }
            let V::Map(ms) = v.v else {
                return Err(bad(files, "define_macro", &v, "a mapping NAME: value"));
            };
            for (mk, mv) in ms {
                let Some(name) = mk.scalar() else {
                    return Err(bad(files, "define_macro", &mk, "a macro name"));
                };
                if defs.iter().any(|(n, _)| *n == name) {
                    return Err(ConfigError::msg(format!(
                        "config key `define_macro` ({}): macro `{name}` is defined twice",
                        files.describe(mk.pos)
                    )));
                }
                defs.push((name, mv));
            }
        }
        *entries = rest;
        for (name, value) in env_vars {
            let Some(macro_name) = name.strip_prefix("EJABBERD_MACRO_") else {
                continue;
            };
            let mut node = parse_text(value, 0, files)
                .unwrap_or(Node::new(V::Str(value.clone()), Pos::default()));
            if matches!(node.v, V::Null) {
                node.v = V::Str(value.clone());
            }
            node.pos = Pos::default();
            defs.retain(|(n, _)| n != macro_name);
            defs.push((macro_name.to_string(), node));
        }
        // Macros may use macros.
        let mut resolved = Vec::with_capacity(defs.len());
        for (name, v) in &defs {
            let mut v = v.clone();
            let mut stack = vec![name.clone()];
            expand(&mut v, &defs, &mut stack, &format!("define_macro.{name}"))?;
            resolved.push((name.clone(), v));
        }
        Ok(Macros { defs: resolved })
    }

    /// Replace macro uses in `n` (a value).
    pub fn apply(&self, n: &mut Node, path: &str) -> Result<(), ConfigError> {
        if self.defs.is_empty() {
            return Ok(());
        }
        let mut stack = Vec::new();
        expand(n, &self.defs, &mut stack, path)
    }
}

fn expand(
    n: &mut Node,
    defs: &[(String, Node)],
    stack: &mut Vec<String>,
    path: &str,
) -> Result<(), ConfigError> {
    if let Some(text) = n.scalar()
        && let Some((name, val)) = defs.iter().find(|(name, _)| *name == text)
    {
        if stack.contains(name) {
            return Err(ConfigError::msg(format!(
                "config key `{path}`: macro `{name}` is defined in terms of itself"
            )));
        }
        let pos = n.pos;
        *n = val.clone();
        n.pos = pos;
        stack.push(name.clone());
        let r = expand(n, defs, stack, path);
        stack.pop();
        return r;
    }
    match &mut n.v {
        V::Str(s) if s.contains('@') => {
            for (name, val) in defs {
                let pat = format!("@{name}@");
                if s.contains(&pat)
                    && let Some(text) = val.scalar()
                {
                    *s = s.replace(&pat, &text);
                }
            }
        }
        V::Seq(items) => {
            for i in items {
                expand(i, defs, stack, path)?;
            }
        }
        V::Map(entries) => {
            for (_, v) in entries {
                expand(v, defs, stack, path)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Top-level keys seen twice (after includes): an error naming both places.
pub(crate) fn check_duplicates(entries: &[(Node, Node)], files: &Files) -> Result<(), ConfigError> {
    let mut seen: HashSet<String> = HashSet::new();
    for (k, _) in entries {
        let name = k.scalar().unwrap_or_default();
        if !seen.insert(name.clone()) {
            let first = entries
                .iter()
                .find(|(k2, _)| k2.scalar().as_deref() == Some(name.as_str()))
                .map(|(k2, _)| files.describe(k2.pos))
                .unwrap_or_default();
            return Err(ConfigError::msg(format!(
                "config key `{name}` ({}): already set ({first})",
                files.describe(k.pos)
            )));
        }
    }
    Ok(())
}
