//! The layering rule, checked: no module of this crate depends, directly or through others,
//! on a module that depends on it. A dependency is any path into another module outside test
//! code and comments: `use crate::…` and `use super::…` trees, inline `crate::…`/`super::…`
//! paths, and a parent's use of its own submodules (`tenants::routes()`).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// Every module of the crate (`service::events`), with its source file.
fn modules(src: &Path) -> BTreeMap<String, std::path::PathBuf> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, std::path::PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let module = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}::{name}")
            };
            if path.is_dir() {
                walk(&path, &module, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.insert(module, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, "", &mut out);
    out.remove("main");
    if let Some(lib) = out.remove("lib") {
        out.insert("crate".into(), lib);
    }
    out
}

/// The code of a file without comments and without its `#[cfg(test)]` items.
fn code(text: &str) -> String {
    let mut kept = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            // A test module runs to the end of the file (the convention here); a test-only
            // declaration is the next line.
            if lines
                .peek()
                .is_some_and(|l| l.trim_start().starts_with("mod tests"))
            {
                break;
            }
            lines.next();
            continue;
        }
        kept.push_str(line.split("//").next().unwrap_or_default());
        kept.push('\n');
    }
    kept
}

/// Expands a use tree (`a::{b, c::{d, e as f}}`) into paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or_default();
        return vec![path.chars().filter(|c| !c.is_whitespace()).collect()];
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
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(&format!("{}{p}", prefix.trim())))
        .collect()
}

/// Every path a piece of code names: use trees, and inline `crate::`/`super::` paths.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let statement = &rest[at + 4..];
        let end = statement.find(';').unwrap_or(statement.len());
        if before.is_none_or(|c| !c.is_alphanumeric() && c != '_') {
            out.extend(expand(&statement[..end]));
        }
        rest = &statement[end.min(statement.len())..];
    }
    for root in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(root) {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            let path = tail[..end].trim_end_matches(':');
            // `crate::{…}` is a use tree, read above.
            if path.len() > root.len() - 2 {
                out.push(path.to_owned());
            }
            rest = &tail[end..];
        }
    }
    out
}

/// The modules `module` (whose code is `code`) depends on.
fn dependencies(
    module: &str,
    code: &str,
    all: &BTreeMap<String, std::path::PathBuf>,
) -> BTreeSet<String> {
    let here: Vec<&str> = if module == "crate" {
        Vec::new()
    } else {
        module.split("::").collect()
    };
    let children: BTreeSet<String> = code
        .lines()
        .filter_map(|l| {
            let l = l
                .trim_start()
                .trim_start_matches("pub ")
                .trim_start_matches("pub(crate) ");
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
        })
        .collect();
    let mut named: Vec<String> = paths(code);
    // A parent reaching into its own submodule by its bare name (`tenants::routes()`).
    for child in &children {
        let needle = format!("{child}::");
        for (at, _) in code.match_indices(&needle) {
            let before = code[..at].chars().last();
            if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':')) {
                named.push(needle.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    for path in named {
        let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        let absolute: Vec<&str> = match segments.first().copied() {
            Some("crate") => segments.split_off(1),
            Some("super") => {
                let mut base = here.clone();
                while segments.first() == Some(&"super") {
                    segments.remove(0);
                    base.pop();
                }
                base.extend(segments);
                base
            }
            Some("self") => here
                .iter()
                .copied()
                .chain(segments.into_iter().skip(1))
                .collect(),
            Some(first) if children.contains(first) => {
                here.iter().copied().chain(segments).collect()
            }
            _ => continue,
        };
        // The longest prefix that is a module.
        let target = (1..=absolute.len())
            .rev()
            .map(|n| absolute[..n].join("::"))
            .find(|m| all.contains_key(m))
            .unwrap_or_else(|| "crate".to_owned());
        if target != module {
            out.insert(target);
        }
    }
    out
}

/// The dependency graph of the crate's modules.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let all = modules(src);
    all.iter()
        .map(|(module, file)| {
            let text = std::fs::read_to_string(file).unwrap();
            (module.clone(), dependencies(module, &code(&text), &all))
        })
        .collect()
}

/// One cycle of `graph`, if there is any.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    assert!(graph.len() > 20, "{graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import circle: {} in {graph:#?}", cycle.join(" → "));
    }
    // The layers the crate documents.
    for (module, forbidden) in [
        ("store", "service"),
        ("service", "http"),
        ("service", "state"),
        ("service", "extract"),
        ("validation", "service"),
        ("maintenance", "http"),
    ] {
        assert!(
            !graph[module].contains(forbidden),
            "{module} uses {forbidden}: {:?}",
            graph[module]
        );
    }
}

#[test]
fn the_check_finds_a_circle_and_reads_use_trees() {
    assert_eq!(
        expand("crate::{a::{B, c::D}, e as f}"),
        ["crate::a::B", "crate::a::c::D", "crate::e"]
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
    let all: BTreeMap<String, std::path::PathBuf> = ["crate", "http", "http::tenants", "service"]
        .into_iter()
        .map(|m| (m.to_owned(), std::path::PathBuf::new()))
        .collect();
    let deps = dependencies(
        "http",
        "pub mod tenants;\nuse crate::service::Caller;\nfn f() { tenants::routes(); }",
        &all,
    );
    assert_eq!(
        deps.into_iter().collect::<Vec<_>>(),
        ["http::tenants", "service"]
    );
}
