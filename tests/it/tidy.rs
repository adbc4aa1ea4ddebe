//! The invariants that can be read from the source text, checked on every run so they
//! cannot drift (rust-analyzer keeps the same kind of test, `tidy.rs`). Each rule reads the
//! tree as it is, not a list of files, and a failure names the file and the rule.
//!
//! Comments and string literals are blanked out before a rule looks at code (see
//! [`code_of`]), so prose about sled or tokio never trips a rule; only names in code do.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Files allowed over their size limit while they are being split (none since issue 13).
/// The test fails when one of them is back under the limit, so the list only shrinks.
const OVERSIZED: &[&str] = &[];

/// Most lines a file under `src/` may have; tests and benches may have `TEST_LINES`.
const SRC_LINES: usize = 450;
const TEST_LINES: usize = 600;

/// What `job` may not name: whatever does I/O or reads the clock (crates, `std` modules,
/// and eddy's own modules that do either). The state machine stays a pure function.
const JOB_FORBIDS_CRATES: &[&str] = &[
    "tokio",
    "tokio_util",
    "tokio_tungstenite",
    "sled",
    "reqwest",
    "hyper",
    "hyper_util",
    "rustix",
    "tempfile",
    "SystemTime",
    "Instant",
];
const JOB_FORBIDS_STD: &[&str] = &["fs", "net", "io", "process", "thread"];
const JOB_FORBIDS_MODULES: &[&str] = &[
    "store",
    "http",
    "engine",
    "ws",
    "delivery",
    "ai",
    "scheduler",
    "server",
    "egress",
    "clock",
    "cli",
    "demo",
];

/// Modules that may not name others: `store` is storage only (it knows records, not who
/// uses them) and the engine never answers HTTP.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "store",
        &[
            "http",
            "engine",
            "ws",
            "scheduler",
            "server",
            "catalog",
            "ai",
            "delivery",
        ],
    ),
    ("engine", &["http"]),
];

/// The sentence of `ARCHITECTURE.md` that names the modules allowed to build HTTP clients.
const CLIENT_RULE: &str = "HTTP clients are built only in";

/// The rules that the source tree keeps: every file documented, sled only in `store`, HTTP
/// clients only where `ARCHITECTURE.md` says, `job` free of I/O, the layers, both module
/// maps true, and no file over its size limit.
#[test]
fn source_tree_is_tidy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let architecture = read(&root.join("ARCHITECTURE.md"));
    let mut failures = Vec::new();
    let mut fail = |file: &Path, rule: &str, detail: String| {
        let file = file.strip_prefix(root).unwrap_or(file).display();
        failures.push(format!("{file}: [{rule}] {detail}"));
    };

    let client_modules = sentence_names(&architecture, CLIENT_RULE);
    assert!(
        !client_modules.is_empty(),
        "ARCHITECTURE.md: [http-clients] no sentence \"{CLIENT_RULE} `module`, …\" to read"
    );
    for path in rust_files(&root.join("src")) {
        let text = read(&path);
        let code = code_of(&text);
        let module = module_path(&root.join("src"), &path);
        let top = module.split("::").next().unwrap_or_default().to_string();
        if !text.starts_with("//!") {
            fail(
                &path,
                "docs",
                "does not open with a `//!` module doc".into(),
            );
        }
        if top != "store"
            && let Some(line) = line_naming(&code, "sled")
        {
            fail(
                &path,
                "sled",
                format!("names sled outside `store` (line {line})"),
            );
        }
        if builds_http_client(&code)
            && !client_modules
                .iter()
                .any(|m| module == *m || module.starts_with(&format!("{m}::")))
        {
            fail(
                &path,
                "http-clients",
                format!(
                    "builds a reqwest client, but `{module}` is not in ARCHITECTURE.md's \
                     \"{CLIENT_RULE}\" list ({client_modules:?})"
                ),
            );
        }
        if top == "job" {
            for name in JOB_FORBIDS_CRATES {
                if let Some(line) = line_naming(&code, name) {
                    fail(
                        &path,
                        "job-pure",
                        format!("names `{name}` (line {line}): no I/O or clock in `job`"),
                    );
                }
            }
            for name in JOB_FORBIDS_STD {
                if let Some(line) = line_naming_path(&code, "std", name) {
                    fail(
                        &path,
                        "job-pure",
                        format!("names `std::{name}` (line {line}): no I/O in `job`"),
                    );
                }
            }
            for name in JOB_FORBIDS_MODULES {
                if let Some(line) = line_naming_path(&code, "crate", name) {
                    fail(
                        &path,
                        "job-pure",
                        format!("names `crate::{name}` (line {line}), which does I/O"),
                    );
                }
            }
        }
        for (owner, forbidden) in LAYERS.iter().filter(|(owner, _)| *owner == top) {
            for name in *forbidden {
                if let Some(line) = line_naming_path(&code, "crate", name) {
                    fail(
                        &path,
                        "layers",
                        format!("`{owner}` names `crate::{name}` (line {line})"),
                    );
                }
            }
        }
    }

    let modules = top_modules(&root.join("src"));
    let maps = [
        ("ARCHITECTURE.md's code map", code_map_names(&architecture)),
        (
            "lib.rs's `# Layout`",
            layout_names(&read(&root.join("src/lib.rs"))),
        ),
    ];
    for (map, names) in &maps {
        for module in modules.difference(names) {
            fail(
                Path::new(&format!("src/{module}")),
                "module-maps",
                format!("missing from {map}"),
            );
        }
        for ghost in names.difference(&modules) {
            fail(
                Path::new(&format!("src/{ghost}")),
                "module-maps",
                format!("on {map}, but there is no such module"),
            );
        }
    }

    for (dir, limit) in [
        ("src", SRC_LINES),
        ("tests", TEST_LINES),
        ("benches", TEST_LINES),
    ] {
        for path in rust_files(&root.join(dir)) {
            let text = read(&path);
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if dir != "src" && !text.starts_with("//!") {
                fail(
                    &path,
                    "docs",
                    "does not open with a `//!` module doc".into(),
                );
            }
            let lines = text.lines().count();
            let known = OVERSIZED.contains(&relative.as_str());
            if lines > limit && !known {
                fail(
                    &path,
                    "size",
                    format!("{lines} lines, over {limit}: split it along a seam"),
                );
            }
            if known && lines <= limit {
                fail(
                    &path,
                    "size",
                    format!("{lines} lines now: remove it from tidy.rs's OVERSIZED"),
                );
            }
        }
    }
    for listed in OVERSIZED.iter().filter(|f| !root.join(f).exists()) {
        fail(
            Path::new(listed),
            "size",
            "is gone: remove it from tidy.rs's OVERSIZED".into(),
        );
    }

    assert!(
        failures.is_empty(),
        "the source tree breaks its rules:\n{}",
        failures.join("\n")
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `.rs` file under `dir`, sorted, skipping dependencies of JS tooling.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.ends_with("node_modules") {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// `src/http/conn/mod.rs` → `http::conn`; `src/ai/run.rs` → `ai::run`.
fn module_path(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p != "mod")
        .collect();
    parts.join("::")
}

/// The crate's top-level modules, from the tree: `src/x.rs` and `src/x/`.
fn top_modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() || p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .filter(|name| name != "lib" && name != "main")
        .collect()
}

/// The backticked module names in the `###` headings of the `## Code map` section
/// (paths such as `examples/` are not modules).
fn code_map_names(architecture: &str) -> BTreeSet<String> {
    let section = architecture
        .split("\n## ")
        .find(|s| s.starts_with("Code map"))
        .expect("ARCHITECTURE.md has a `## Code map` section");
    section
        .lines()
        .filter(|l| l.starts_with("### "))
        .flat_map(backticked)
        .filter(|name| !name.contains('/') && !name.contains('.'))
        .collect()
}

/// The modules `[`name`]` linked from `lib.rs`'s `# Layout` list.
fn layout_names(lib: &str) -> BTreeSet<String> {
    let layout = lib
        .split("//! # Layout")
        .nth(1)
        .expect("lib.rs has a `//! # Layout` section");
    layout
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("//!"))
        .flat_map(|l| {
            l.split("[`")
                .skip(1)
                .map(|s| s.split('`').next().unwrap_or_default())
        })
        .filter(|name| !name.contains("::"))
        .map(str::to_string)
        .collect()
}

fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The backticked names of the sentence that starts with `opening` (it may wrap lines;
/// it ends at a full stop before a space or a line end).
fn sentence_names(text: &str, opening: &str) -> Vec<String> {
    let Some(start) = text.find(opening) else {
        return Vec::new();
    };
    let rest = &text[start..];
    let end = rest
        .char_indices()
        .find(|&(i, c)| c == '.' && rest[i + 1..].starts_with(char::is_whitespace))
        .map_or(rest.len(), |(i, _)| i);
    backticked(&rest[..end])
}

/// Whether the code makes a reqwest client (not only uses one it was given).
fn builds_http_client(code: &str) -> bool {
    line_naming(code, "reqwest").is_some()
        && ["Client::builder", "Client::new", "ClientBuilder"]
            .iter()
            .any(|call| code.contains(call))
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The 1-based line of the first place `word` stands as a whole identifier in `code`.
fn line_naming(code: &str, word: &str) -> Option<usize> {
    code.match_indices(word)
        .find(|(at, _)| {
            let before = code[..*at].chars().next_back();
            let after = code[at + word.len()..].chars().next();
            !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
        })
        .map(|(at, _)| code[..at].lines().count().max(1))
}

/// The line of the first place `root::name` is named, directly or in a `root::{…}` group.
fn line_naming_path(code: &str, root: &str, name: &str) -> Option<usize> {
    let prefix = format!("{root}::");
    let mut from = 0;
    while let Some(found) = code[from..].find(&prefix) {
        let at = from + found;
        from = at + prefix.len();
        if code[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = &code[from..];
        let named = match rest.strip_prefix('{') {
            Some(group) => line_naming(&group[..group.find('}').unwrap_or(group.len())], name),
            None => line_naming(
                &rest[..rest.find(|c| !is_ident(c)).unwrap_or(rest.len())],
                name,
            ),
        };
        if named.is_some() {
            return Some(code[..at].lines().count().max(1));
        }
    }
    None
}

/// The number of `#`s of a raw string that starts after its `r`, if one does.
fn raw_hashes(after_r: &[char]) -> Option<usize> {
    let hashes = after_r.iter().take_while(|c| **c == '#').count();
    (after_r.get(hashes) == Some(&'"')).then_some(hashes)
}

/// `text` with comments and the contents of string and char literals blanked (newlines
/// kept, so line numbers hold): what the compiler reads as names.
fn code_of(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    // Appends the newlines of `chars[from..to]` only.
    let blank = |out: &mut String, from: usize, to: usize| {
        out.extend(
            chars[from..to.min(chars.len())]
                .iter()
                .filter(|c| **c == '\n'),
        );
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        // `b"…"` and `br"…"` are literals too: a `b` alone before them is no identifier.
        let lone_b = i > 0 && chars[i - 1] == 'b' && (i < 2 || !is_ident(chars[i - 2]));
        let prev_ident = i > 0 && is_ident(chars[i - 1]) && !lone_b;
        let end = if c == '/' && next == Some('/') {
            (i..chars.len())
                .find(|&j| chars[j] == '\n')
                .unwrap_or(chars.len())
        } else if c == '/' && next == Some('*') {
            let (mut depth, mut j) = (0, i);
            while j < chars.len() {
                if chars[j] == '/' && chars.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if chars[j] == '*' && chars.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            j
        } else if c == 'r' && !prev_ident && raw_hashes(&chars[i + 1..]).is_some() {
            let hashes = raw_hashes(&chars[i + 1..]).unwrap_or_default();
            let closes = |j: usize| {
                chars[j] == '"'
                    && chars[j + 1..].iter().take_while(|c| **c == '#').count() >= hashes
            };
            (i + 2 + hashes..chars.len())
                .find(|&j| closes(j))
                .map_or(chars.len(), |j| j + 1 + hashes)
        } else if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            j + 1
        } else if c == '\'' && next == Some('\\') {
            (i + 2..chars.len())
                .find(|&j| chars[j] == '\'')
                .map_or(chars.len(), |j| j + 1)
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            i + 3
        } else {
            out.push(c);
            i += 1;
            continue;
        };
        blank(&mut out, i, end);
        out.push(' ');
        i = end;
    }
    out
}

/// The blanking keeps names in code and drops them from comments and literals.
#[test]
fn code_of_keeps_only_code() {
    let text = "use sled::Tree; // sled\nlet s = \"tokio\"; let r = r#\"hyper \"x\"\"#;\n/* reqwest /* nested */ */ let c = '\\''; fn f<'a>(x: &'a str) {}\n";
    let code = code_of(text);
    assert_eq!(line_naming(&code, "sled"), Some(1));
    for gone in ["tokio", "hyper", "reqwest", "nested"] {
        assert_eq!(line_naming(&code, gone), None, "{gone} in {code:?}");
    }
    assert!(code.contains("fn f<'a>(x: &'a str)"), "{code:?}");
    assert_eq!(code.lines().count(), 3, "{code:?}");
    assert_eq!(
        line_naming_path("use std::{fmt, fs};", "std", "fs"),
        Some(1)
    );
    assert_eq!(line_naming_path("use std::fmt; x::fs", "std", "fs"), None);
    assert_eq!(
        line_naming_path("\nuse crate::store::Store;", "crate", "store"),
        Some(2)
    );
}
