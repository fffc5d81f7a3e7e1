//! The docid tree from the command line: built with the tiny model's embeddings (no download),
//! written where asked, never over an existing file without --force, and loadable for the
//! corpus it was built for.

use selfret::corpus::{load_path, LoadOptions};
use selfret::docids::DocidTree;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_docids_command_builds_a_tree_and_keeps_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("docids.json");
    let corpus_path = root().join("corpora/ir_history.jsonl");
    let run = |k: &str, extra: &[&str]| {
        let mut args = vec![
            "docids",
            "--corpus",
            corpus_path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--embedder",
            "model",
            "--model",
            "tiny",
            "--k",
            k,
            "--max-leaf",
            "10",
        ];
        args.extend_from_slice(extra);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_selfret"))
            .args(&args)
            .current_dir(root())
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (ok, stdout, stderr) = run("4", &[]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("loaded 105 passages"),
        "load report: {stderr}"
    );
    assert!(stdout.contains("105 passages ->"), "{stdout}");
    let corpus = load_path(&corpus_path, &LoadOptions::default()).unwrap();
    let tree = DocidTree::load(&out, &corpus).unwrap();
    assert!(tree.embedder.contains("tiny"), "{}", tree.embedder);
    assert!(tree.depth() >= 3, "105 passages, k 4, leaves of 10");
    assert_eq!(tree.passages.len(), 105);
    let before = std::fs::read(&out).unwrap();
    let (ok, _, stderr) = run("4", &["--seed", "99"]);
    assert!(!ok && stderr.contains("exists"), "{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), before, "kept without --force");
    let (ok, _, stderr) = run("1", &["--force"]);
    assert!(!ok && stderr.contains("at least 2"), "{stderr}");
}
