//! The crate's modules form layers: no module imports a module that imports
//! it back, directly or through others. This test reads the `crate::` paths
//! of every source file under `src/` (test code excluded: unit tests may
//! reach up to build a node), folds them into the top-level modules they
//! name, and fails on any cycle, printing it. It also pins the rules
//! docs/DESIGN.md states for the core: `core` knows none of the parts built
//! on it, and `relay`, `rooms` and `rendezvous` know the core, never each
//! other or the node.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level module a source file belongs to (`None` for the crate root
/// and the binary, which may use anything).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    let name = first.trim_end_matches(".rs").to_string();
    (!matches!(name.as_str(), "lib" | "main" | "bin")).then_some(name)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code without its test code: `tests.rs` files are skipped
/// whole, and an inline `#[cfg(test)]` module is cut from where it starts
/// (by convention it is the last item of a file).
fn non_test_code(path: &Path) -> Option<String> {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return None;
    }
    let text = std::fs::read_to_string(path).expect("read source");
    // An inline test module (`#[cfg(test)]` then `mod name {`), not a
    // declaration of a test file (`mod tests;`), which may sit anywhere.
    let mut at = 0;
    while let Some(i) = text[at..].find("#[cfg(test)]\nmod ") {
        let start = at + i;
        let rest = &text[start + "#[cfg(test)]\nmod ".len()..];
        let head: String = rest.chars().take_while(|c| *c != '\n').collect();
        if head.trim_end().ends_with('{') {
            return Some(text[..start].to_string());
        }
        at = start + 1;
    }
    Some(text)
}

/// Top-level modules named by `crate::NAME` paths in `code`, outside comments.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `$crate::` in macros and `::switchboard::` never occur here;
            // `crate::{a, b}` groups are spelled out one per path.
            if !name.is_empty() && !rest[..i].ends_with('$') {
                out.insert(name);
            }
            rest = after;
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let Some(module) = module_of(&src, &f) else {
            continue;
        };
        let Some(code) = non_test_code(&f) else {
            continue;
        };
        let entry = g.entry(module.clone()).or_default();
        for r in crate_refs(&code) {
            if r != module {
                entry.insert(r);
            }
        }
    }
    g
}

/// A cycle through `start`, if there is one (depth-first, bounded by the
/// number of modules).
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in g.get(node).into_iter().flatten() {
            if let Some(c) = visit(g, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for start in g.keys() {
        if let Some(c) = visit(g, start, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn modules_import_each_other_in_one_direction_only() {
    let g = graph();
    assert!(g.len() > 10, "found too few modules: {g:?}");
    if let Some(cycle) = find_cycle(&g) {
        panic!(
            "modules import each other in a circle: {}\nthe graph: {g:#?}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_core_knows_nothing_built_on_it() {
    let g = graph();
    let deps = |m: &str| g.get(m).cloned().unwrap_or_default();
    let above = [
        "node",
        "relay",
        "rooms",
        "rendezvous",
        "dashboard",
        "console",
        "dialect",
        "connection",
        "http",
    ];
    for m in above {
        assert!(
            !deps("core").contains(m),
            "core imports {m}: {:?}",
            deps("core")
        );
    }
    for part in ["relay", "rooms", "rendezvous", "dashboard", "console"] {
        assert!(deps(part).contains("core"), "{part} does not use the core?");
        for other in [
            "node",
            "relay",
            "rooms",
            "rendezvous",
            "dashboard",
            "console",
            "dialect",
            "http",
        ] {
            if other != part {
                assert!(
                    !deps(part).contains(other),
                    "{part} imports {other}: {:?}",
                    deps(part)
                );
            }
        }
    }
    // The seams know no door and no part of the node.
    for seam in ["bus", "store"] {
        for m in above.iter().chain(&["core"]) {
            assert!(!deps(seam).contains(*m), "{seam} imports {m}");
        }
    }
}
