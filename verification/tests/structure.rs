//! The code's layout rules, checked on the source tree: no module of a crate imports a module
//! that imports it back (directly or through a chain), and no file of non-test code exceeds
//! 1,000 lines (ARCHITECTURE.md §1).
//!
//! The check reads the sources as text. A module's imports are the `crate::`, `super::` and
//! `self::` paths it names (in `use` declarations and in code) and the child modules its `use`
//! declarations start from. A path that names an item re-exported by a module (`pub use`) is
//! followed to the module that defines the item, so a cycle cannot hide behind a re-export. A
//! module and its own ancestors may name each other (a parent re-exports its children, a child
//! reaches its parent's private items); test modules are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The library roots of the workspace's crates.
const CRATES: &[&str] = &[
    "core/src/lib.rs",
    "model/src/lib.rs",
    "target/src/lib.rs",
    "verification/src/lib.rs",
    "verification/hosts/src/lib.rs",
];

const MAX_LINES: usize = 1000;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// One module: its path from the crate root (`["iscsi", "login"]`), its file and its source
/// without comments and test modules.
struct Module {
    file: PathBuf,
    code: String,
}

type ModPath = Vec<String>;

/// Removes `//` comments (including doc comments), block comments and string literals' contents.
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'/' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'*' {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'*' {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && i + 1 < b.len() && b[i + 1] == b'/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == b'\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            // A string literal (raw strings with quotes inside are rare enough in this tree).
            out.push('"');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                if i < b.len() && b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            out.push('"');
            i += 1;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The source up to a `#[cfg(test)]` module (test modules sit at the end of a file here).
fn without_tests(src: &str) -> &str {
    let mut from = 0;
    while let Some(p) = src[from..].find("#[cfg(test)]") {
        let at = from + p;
        let rest = src[at + "#[cfg(test)]".len()..].trim_start();
        if rest.starts_with("mod ") || rest.starts_with("pub mod ") {
            return &src[..at];
        }
        from = at + 1;
    }
    src
}

/// Child module declarations (`mod x;` / `pub mod x;`, not inline `mod x { ... }`) of a source.
fn child_decls(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in code.lines() {
        let l = line.trim();
        let l = l
            .strip_prefix("pub(crate) ")
            .or_else(|| l.strip_prefix("pub(super) "))
            .or_else(|| l.strip_prefix("pub "))
            .unwrap_or(l);
        if let Some(rest) = l.strip_prefix("mod ") {
            if let Some(name) = rest.strip_suffix(';') {
                out.push(name.trim().to_string());
            }
        }
    }
    out
}

/// Reads a crate's module tree from its root file.
fn load_crate(root_file: &Path) -> BTreeMap<ModPath, Module> {
    let mut mods = BTreeMap::new();
    let mut todo = vec![(Vec::<String>::new(), root_file.to_path_buf())];
    while let Some((path, file)) = todo.pop() {
        let src = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let code = strip(without_tests(&src));
        let dir = {
            let stem = file.file_stem().unwrap().to_str().unwrap();
            let parent = file.parent().unwrap();
            if matches!(stem, "lib" | "mod" | "main") {
                parent.to_path_buf()
            } else {
                parent.join(stem)
            }
        };
        for child in child_decls(&code) {
            if child == "tests" {
                continue;
            }
            let a = dir.join(format!("{child}.rs"));
            let b = dir.join(&child).join("mod.rs");
            let f = if a.exists() { a } else { b };
            let mut p = path.clone();
            p.push(child);
            todo.push((p, f));
        }
        mods.insert(path, Module { file, code });
    }
    mods
}

/// Expands a `use` tree (`a::{b::C, d}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap().trim().to_string()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand)
        .map(|p| {
            if p == "self" {
                prefix.trim_end_matches("::").to_string()
            } else {
                format!("{prefix}{p}")
            }
        })
        .collect()
}

/// The `use` declarations of a module: (is it `pub`, each expanded path).
fn uses(code: &str) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(p) = rest.find("use ") {
        let before = &rest[..p];
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let head = before[line_start..].trim();
        let is_decl = head.is_empty()
            || head == "pub"
            || head.starts_with("pub(")
            || head.ends_with('{') && head.len() == 1;
        let word_start = p == 0 || !rest.as_bytes()[p - 1].is_ascii_alphanumeric();
        let after = &rest[p + 4..];
        let end = after.find(';').unwrap_or(after.len());
        if is_decl && word_start && !head.starts_with("//") {
            let is_pub = head.starts_with("pub");
            for path in expand(&after[..end]) {
                out.push((is_pub, path.replace(char::is_whitespace, "")));
            }
            rest = &after[end..];
        } else {
            rest = after;
        }
    }
    out
}

/// `crate::`, `super::` and `self::` paths named in code outside `use` declarations.
fn inline_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for kw in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(p) = code[from..].find(kw) {
            let at = from + p;
            let ok = at == 0
                || !(code.as_bytes()[at - 1].is_ascii_alphanumeric()
                    || code.as_bytes()[at - 1] == b'_'
                    || code.as_bytes()[at - 1] == b':');
            let end = code[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map(|e| at + e)
                .unwrap_or(code.len());
            if ok && !code[at..end].ends_with("::") {
                out.push(code[at..end].to_string());
            }
            from = end.max(at + 1);
        }
    }
    out
}

struct Crate {
    mods: BTreeMap<ModPath, Module>,
    /// Per module: name -> the path it re-exports (`pub use`), and glob re-export sources.
    reexports: BTreeMap<ModPath, (BTreeMap<String, ModPath>, Vec<ModPath>)>,
}

impl Crate {
    /// The absolute segments of `path` named in module `at`, or None for another crate's path.
    fn absolute(&self, at: &ModPath, path: &str) -> Option<Vec<String>> {
        let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        let mut cur: Vec<String>;
        let mut i = 0;
        match segs.first()? {
            &"crate" => {
                cur = Vec::new();
                i = 1;
            }
            &"self" => {
                cur = at.clone();
                i = 1;
            }
            &"super" => {
                cur = at.clone();
                while segs.get(i) == Some(&"super") {
                    cur.pop();
                    i += 1;
                }
            }
            first => {
                let mut child = at.clone();
                child.push(first.to_string());
                if !self.mods.contains_key(&child) {
                    return None;
                }
                cur = at.clone();
            }
        }
        cur.extend(segs[i..].iter().map(|s| s.to_string()));
        Some(cur)
    }

    /// The module that `segs` (absolute) lands in, following re-exports of items.
    fn resolve(&self, segs: &[String], depth: usize) -> Option<ModPath> {
        let mut cur: ModPath = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let mut child = cur.clone();
            child.push(s.clone());
            if self.mods.contains_key(&child) {
                cur = child;
                continue;
            }
            // `s` is an item of `cur`: follow a re-export of it, if any.
            if depth > 8 {
                return Some(cur);
            }
            if let Some((named, globs)) = self.reexports.get(&cur) {
                if let Some(target) = named.get(s) {
                    let mut t = target.clone();
                    t.extend(segs[i + 1..].iter().cloned());
                    return self.resolve(&t, depth + 1).or(Some(cur));
                }
                for g in globs {
                    let mut t = g.clone();
                    t.push(s.clone());
                    if let Some(m) = self.resolve(&t, depth + 1) {
                        if &m != g || self.defines(g, s) {
                            return Some(m);
                        }
                    }
                }
            }
            return Some(cur);
        }
        Some(cur)
    }

    fn defines(&self, m: &ModPath, name: &str) -> bool {
        let Some(module) = self.mods.get(m) else {
            return false;
        };
        [
            "struct ", "enum ", "fn ", "type ", "trait ", "const ", "static ", "union ",
        ]
        .iter()
        .any(|kw| {
            module.code.contains(&format!("{kw}{name}<"))
                || module.code.contains(&format!("{kw}{name} "))
                || module.code.contains(&format!("{kw}{name}("))
                || module.code.contains(&format!("{kw}{name}:"))
                || module.code.contains(&format!("{kw}{name};"))
        })
    }
}

fn build(root_file: &Path) -> Crate {
    let mods = load_crate(root_file);
    let mut c = Crate {
        mods,
        reexports: BTreeMap::new(),
    };
    let mut re = BTreeMap::new();
    for (path, m) in &c.mods {
        let mut named = BTreeMap::new();
        let mut globs = Vec::new();
        for (is_pub, u) in uses(&m.code) {
            if !is_pub {
                continue;
            }
            let Some(abs) = c.absolute(path, &u) else {
                continue;
            };
            if abs.last().map(|s| s == "*").unwrap_or(false) {
                globs.push(abs[..abs.len() - 1].to_vec());
            } else if let Some(name) = abs.last() {
                let alias = m.code.split(&format!("{name} as ")).nth(1).and_then(|r| {
                    r.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .next()
                        .map(String::from)
                });
                let key = alias
                    .filter(|_| u.contains(" as "))
                    .unwrap_or_else(|| name.clone());
                named.insert(key, abs.clone());
            }
        }
        re.insert(path.clone(), (named, globs));
    }
    c.reexports = re;
    c
}

fn is_ancestor(a: &ModPath, b: &ModPath) -> bool {
    a.len() <= b.len() && b[..a.len()] == a[..]
}

/// The import edges between modules that are not each other's ancestor.
fn edges(c: &Crate) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let mut out: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (path, m) in &c.mods {
        let mut named: Vec<String> = uses(&m.code).into_iter().map(|(_, u)| u).collect();
        named.extend(inline_paths(&m.code));
        for u in named {
            let Some(abs) = c.absolute(path, &u) else {
                continue;
            };
            let abs: Vec<String> = abs.into_iter().filter(|s| s != "*").collect();
            let Some(target) = c.resolve(&abs, 0) else {
                continue;
            };
            if is_ancestor(&target, path) || is_ancestor(path, &target) {
                continue;
            }
            out.entry(path.clone()).or_default().insert(target);
        }
    }
    out
}

/// Every strongly connected component with more than one module (Tarjan).
fn cycles(g: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    struct T<'a> {
        g: &'a BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<ModPath, usize>,
        low: BTreeMap<ModPath, usize>,
        stack: Vec<ModPath>,
        on: BTreeSet<ModPath>,
        next: usize,
        out: Vec<Vec<ModPath>>,
    }
    fn visit(t: &mut T, v: &ModPath) {
        t.index.insert(v.clone(), t.next);
        t.low.insert(v.clone(), t.next);
        t.next += 1;
        t.stack.push(v.clone());
        t.on.insert(v.clone());
        let succ: Vec<ModPath> =
            t.g.get(v)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
        for w in succ {
            if !t.index.contains_key(&w) {
                visit(t, &w);
                let lw = t.low[&w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(&w) {
                let iw = t.index[&w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(&w);
                let done = &w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    let nodes: Vec<ModPath> = g.keys().cloned().collect();
    for v in nodes {
        if !t.index.contains_key(&v) {
            visit(&mut t, &v);
        }
    }
    t.out
}

fn show(p: &ModPath) -> String {
    if p.is_empty() {
        "crate".into()
    } else {
        p.join("::")
    }
}

fn crates() -> Vec<(String, Crate)> {
    CRATES
        .iter()
        .map(|r| root().join(r))
        .filter(|r| r.exists())
        .map(|r| (r.display().to_string(), build(&r)))
        .collect()
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let mut problems = Vec::new();
    for (name, c) in crates() {
        let g = edges(&c);
        for comp in cycles(&g) {
            let mut lines = Vec::new();
            for a in &comp {
                for b in g.get(a).into_iter().flatten() {
                    if comp.contains(b) {
                        lines.push(format!("    {} -> {}", show(a), show(b)));
                    }
                }
            }
            problems.push(format!(
                "{name}: a cycle among {}:\n{}",
                comp.iter().map(show).collect::<Vec<_>>().join(", "),
                lines.join("\n")
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "module cycles:\n{}",
        problems.join("\n")
    );
}

#[test]
fn no_file_of_non_test_code_is_over_a_thousand_lines() {
    let mut long = Vec::new();
    for (_, c) in crates() {
        for m in c.mods.values() {
            let src = fs::read_to_string(&m.file).unwrap();
            let n = without_tests(&src).lines().count();
            if n > MAX_LINES {
                long.push(format!("{}: {n} lines", m.file.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines of non-test code:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_checker_finds_a_cycle_behind_a_reexport() {
    // A two-module crate in a temporary directory: `a` uses `b` directly, `b` names an item of
    // `a` through the root's re-export.
    let dir = std::env::temp_dir().join(format!("duet-structure-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("lib.rs"), "mod a;\nmod b;\npub use a::Thing;\n").unwrap();
    fs::write(
        dir.join("a.rs"),
        "use crate::b::other;\npub struct Thing;\n",
    )
    .unwrap();
    fs::write(dir.join("b.rs"), "use crate::Thing;\npub fn other() {}\n").unwrap();
    let c = build(&dir.join("lib.rs"));
    let found = cycles(&edges(&c));
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        found.len(),
        1,
        "the cycle a <-> b through the root's re-export"
    );
}

/// The repository paths a document names in code spans (`core/src/ha/grant.rs`, with `{a,b}`
/// alternatives expanded) and in relative links.
fn named_paths(doc: &Path) -> Vec<(usize, String)> {
    const ROOTS: &[&str] = &[
        "core/",
        "model/",
        "target/",
        "verification/",
        "bench/",
        "fuzz/",
        "examples/",
        "docs/",
        ".ci/",
    ];
    let text = fs::read_to_string(doc).unwrap();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        // Code spans.
        for (k, span) in line.split('`').enumerate() {
            if k % 2 == 1
                && ROOTS.iter().any(|r| span.starts_with(r))
                && !span.contains(|c: char| c.is_whitespace() || "*<>$".contains(c))
            {
                let span = span.trim_end_matches([',', '.', ':', ')']);
                if let (Some(a), Some(b)) = (span.find('{'), span.find('}')) {
                    for alt in span[a + 1..b].split(',') {
                        out.push((i + 1, format!("{}{}{}", &span[..a], alt, &span[b + 1..])));
                    }
                } else {
                    out.push((i + 1, span.to_string()));
                }
            }
        }
        // Relative links: ](path) or ](path#anchor).
        let mut rest = line;
        while let Some(p) = rest.find("](") {
            let after = &rest[p + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].split('#').next().unwrap_or("");
            if !target.is_empty() && !target.contains("://") {
                let base = doc.parent().unwrap().strip_prefix(root()).unwrap();
                let joined = base.join(target);
                out.push((i + 1, joined.to_string_lossy().into_owned()));
            }
            rest = &after[end.min(after.len())..];
        }
    }
    out
}

#[test]
fn the_documents_name_only_paths_that_exist() {
    let mut docs = vec![root().join("README.md"), root().join("ARCHITECTURE.md")];
    for e in fs::read_dir(root().join("docs")).unwrap() {
        docs.push(e.unwrap().path());
    }
    let mut missing = Vec::new();
    for doc in &docs {
        for (line, path) in named_paths(doc) {
            // Normalise `a/../b` from relative links.
            let mut parts: Vec<&str> = Vec::new();
            for seg in path.split('/') {
                match seg {
                    ".." => {
                        parts.pop();
                    }
                    "." | "" => {}
                    s => parts.push(s),
                }
            }
            let p = root().join(parts.join("/"));
            if !p.exists() {
                missing.push(format!("{}:{line}: {path}", doc.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "paths named in the documents that do not exist:\n{}",
        missing.join("\n")
    );
}
