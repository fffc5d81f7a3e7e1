//! Loaders. One bad line or file never aborts a load: it is skipped and reported by name.

use super::chunk::{chunk_text, ChunkOptions};
use super::{Corpus, FileStatus, Passage, Skipped};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// How to read a collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadOptions {
    pub chunk: ChunkOptions,
    /// Also split JSONL records longer than `chunk.max_words` (ids become `id#n`). Off by
    /// default: JSONL records are usually passages already and evaluation files refer to their ids.
    /// A record over [`JSONL_HARD_LIMIT`] times `chunk.max_words` is split either way (a
    /// whole book in one line would otherwise be one passage of a million words).
    pub chunk_jsonl: bool,
    /// Documents (.txt, .md, .pdf: read whole) larger than this are skipped. JSONL files are
    /// read line by line and may be of any size (a corpus of a million passages is ~650 MB).
    pub max_file_bytes: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            chunk: ChunkOptions::default(),
            chunk_jsonl: false,
            max_file_bytes: 20 * 1024 * 1024,
        }
    }
}

/// Loads a JSONL file, a BEIR folder (with `corpus.jsonl`) or a folder of .txt/.md/.pdf files.
/// Fails only when nothing at all can be read.
pub fn load_path(path: &Path, opts: &LoadOptions) -> Result<Corpus> {
    let mut passages = Vec::new();
    let mut files = Vec::new();
    let mut seen = HashSet::new();
    if path.is_file() {
        load_file(path, opts, &mut passages, &mut files, &mut seen);
    } else if path.is_dir() {
        let beir = path.join("corpus.jsonl");
        if beir.is_file() {
            load_file(&beir, opts, &mut passages, &mut files, &mut seen);
        } else {
            let mut paths = Vec::new();
            collect_files(path, &mut paths).map_err(|e| Error::io(path, e))?;
            paths.sort();
            for p in paths {
                load_file(&p, opts, &mut passages, &mut files, &mut seen);
            }
        }
    } else {
        return Err(Error::bad_file(path, "no such file or folder"));
    }
    if passages.is_empty() {
        let reasons: Vec<String> = files
            .iter()
            .flat_map(|f| {
                f.skipped.iter().take(3).map(move |s| match s.line {
                    Some(l) => format!("{}:{l}: {}", f.path.display(), s.reason),
                    None => format!("{}: {}", f.path.display(), s.reason),
                })
            })
            .take(5)
            .collect();
        return Err(Error::bad_file(
            path,
            format!(
                "no passages could be loaded{}",
                if reasons.is_empty() {
                    " (no .jsonl, .txt, .md or .pdf files found)".to_string()
                } else {
                    format!(": {}", reasons.join("; "))
                }
            ),
        ));
    }
    Ok(Corpus::from_passages(passages, files))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let p = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            collect_files(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

fn load_file(
    path: &Path,
    opts: &LoadOptions,
    passages: &mut Vec<Passage>,
    files: &mut Vec<FileStatus>,
    seen: &mut HashSet<String>,
) {
    let mut status = FileStatus {
        path: path.to_path_buf(),
        loaded: 0,
        skipped: Vec::new(),
    };
    let whole = |reason: String| Skipped { line: None, reason };
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    match std::fs::metadata(path) {
        Err(e) => status.skipped.push(whole(format!("cannot read: {e}"))),
        Ok(m) if m.len() > opts.max_file_bytes && !matches!(ext.as_str(), "jsonl" | "json") => {
            status.skipped.push(whole(format!(
                "file is {:.1} MB, over the {:.1} MB limit",
                m.len() as f64 / (1024.0 * 1024.0),
                opts.max_file_bytes as f64 / (1024.0 * 1024.0)
            )))
        }
        Ok(_) => {
            let before = passages.len();
            match ext.as_str() {
                "jsonl" | "json" => load_jsonl(path, opts, passages, &mut status, seen),
                "txt" | "md" | "markdown" => match read_text(path) {
                    Ok(text) => {
                        add_document(path, &text, ext != "txt", opts, passages, &mut status, seen)
                    }
                    Err(reason) => status.skipped.push(whole(reason)),
                },
                "pdf" => match pdf_text(path) {
                    Ok(text) => add_document(path, &text, false, opts, passages, &mut status, seen),
                    Err(reason) => status.skipped.push(whole(reason)),
                },
                _ => status.skipped.push(whole(
                    "not a supported file type (.jsonl, .txt, .md, .pdf)".into(),
                )),
            }
            status.loaded = passages.len() - before;
        }
    }
    files.push(status);
}

fn read_text(path: &Path) -> std::result::Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.iter().take(8192).any(|&b| b == 0) {
        return Err("binary file (contains NUL bytes)".into());
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| format!("invalid UTF-8 at byte {}", e.utf8_error().valid_up_to()))?;
    // A byte-order mark would otherwise stick to the first word (and hide a Markdown title).
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

fn pdf_text(path: &Path) -> std::result::Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    // pdf-extract may panic on malformed files; a bad PDF must not take the application down.
    let result = std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem(&bytes));
    match result {
        Ok(Ok(text)) if !text.trim().is_empty() => Ok(text),
        Ok(Ok(_)) => Err("PDF has no extractable text (scanned image?)".into()),
        Ok(Err(e)) => Err(format!("unreadable PDF: {e}")),
        Err(_) => Err("unreadable PDF (the parser failed)".into()),
    }
}

fn json_id(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn load_jsonl(
    path: &Path,
    opts: &LoadOptions,
    passages: &mut Vec<Passage>,
    status: &mut FileStatus,
    seen: &mut HashSet<String>,
) {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            status.skipped.push(Skipped {
                line: None,
                reason: format!("cannot open: {e}"),
            });
            return;
        }
    };
    let reader = std::io::BufReader::new(file);
    for (i, line) in reader.split(b'\n').enumerate() {
        let lineno = i + 1;
        let mut skip = |reason: String| {
            status.skipped.push(Skipped {
                line: Some(lineno),
                reason,
            })
        };
        let bytes = match line {
            Ok(b) => b,
            Err(e) => {
                skip(format!("read error: {e}"));
                break;
            }
        };
        let Ok(mut line) = String::from_utf8(bytes) else {
            skip("invalid UTF-8".into());
            continue;
        };
        // A byte-order mark some editors write before the first line.
        if lineno == 1 && line.starts_with('\u{feff}') {
            line.remove(0);
        }
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                skip(format!("invalid JSON: {e}"));
                continue;
            }
        };
        let Some(id) = v
            .get("id")
            .and_then(json_id)
            .or_else(|| v.get("_id").and_then(json_id))
        else {
            skip("missing `id` (or BEIR `_id`)".into());
            continue;
        };
        let text = v.get("text").and_then(|t| t.as_str()).unwrap_or("");
        let text = crate::prompts::clean(text);
        if text.is_empty() {
            skip(format!("passage `{id}` has an empty `text`"));
            continue;
        }
        let title = v
            .get("title")
            .and_then(|t| t.as_str())
            .map(crate::prompts::clean)
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| placeholder_title(&text));
        let words = text.split_whitespace().count();
        // Words average a few characters; a record of hundreds per "word" is a blob (base64,
        // minified data), which no chunking into words can turn into passages.
        if text.len() > MAX_CHARS_PER_WORD * words.max(1) && text.len() > 10_000 {
            skip(format!(
                "passage `{id}` is {} characters in {words} words: not text (a blob?)",
                text.len()
            ));
            continue;
        }
        let too_long = words > JSONL_HARD_LIMIT * opts.chunk.max_words;
        let pieces = if (opts.chunk_jsonl || too_long) && words > opts.chunk.max_words {
            chunk_text(&text, opts.chunk)
        } else {
            vec![text]
        };
        let n = pieces.len();
        for (k, piece) in pieces.into_iter().enumerate() {
            let pid = if n == 1 {
                id.clone()
            } else {
                format!("{id}#{k}")
            };
            if !seen.insert(pid.clone()) {
                skip(format!("duplicate id `{pid}`"));
                continue;
            }
            passages.push(Passage {
                id: pid,
                title: title.clone(),
                text: piece,
            });
        }
    }
}

/// See [`LoadOptions::chunk_jsonl`].
pub const JSONL_HARD_LIMIT: usize = 5;

/// Above this many characters per word (and 10,000 characters in all) a record is not text.
pub const MAX_CHARS_PER_WORD: usize = 100;

/// Stand-in title for passages without one: their first words (the model can generate a better
/// one later).
pub fn placeholder_title(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().take(8).collect();
    words.join(" ")
}

fn add_document(
    path: &Path,
    text: &str,
    markdown: bool,
    opts: &LoadOptions,
    passages: &mut Vec<Passage>,
    status: &mut FileStatus,
    seen: &mut HashSet<String>,
) {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "document".into());
    let heading = if markdown {
        text.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix('#')
                    .map(|h| h.trim_start_matches('#').trim().to_string())
            })
            .filter(|h| !h.is_empty())
    } else {
        None
    };
    let title = heading.unwrap_or_else(|| stem.replace(['_', '-'], " "));
    let body: String = if markdown {
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| l.trim_start_matches(['>', '*', '-', ' ']))
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        text.to_string()
    };
    let chunks = chunk_text(&body, opts.chunk);
    if chunks.is_empty() {
        status.skipped.push(Skipped {
            line: None,
            reason: "empty document".into(),
        });
        return;
    }
    for (k, c) in chunks.into_iter().enumerate() {
        let id = format!("{stem}#{k}");
        if !seen.insert(id.clone()) {
            status.skipped.push(Skipped {
                line: None,
                reason: format!("duplicate id `{id}` (two files with the same name?)"),
            });
            continue;
        }
        passages.push(Passage {
            id,
            title: title.clone(),
            text: c,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size limit is for documents read whole: a JSONL corpus over it still loads, record
    /// by record (a million passages is ~650 MB), while a text file over it is skipped.
    #[test]
    fn a_large_jsonl_corpus_is_not_held_to_the_document_limit() {
        let dir = tempfile::tempdir().unwrap();
        let lines: String = (0..40)
            .map(|i| {
                format!(
                    "{{\"id\":\"p{i}\",\"title\":\"T{i}\",\"text\":\"Passage number {i} of a corpus larger than the limit.\"}}\n"
                )
            })
            .collect();
        assert!(lines.len() > 1024);
        std::fs::write(dir.path().join("big.jsonl"), &lines).unwrap();
        std::fs::write(dir.path().join("big.txt"), "word ".repeat(400)).unwrap();
        let opts = LoadOptions {
            max_file_bytes: 1024,
            ..Default::default()
        };
        let c = load_path(dir.path(), &opts).unwrap();
        assert_eq!(c.len(), 40);
        assert!(c
            .files
            .iter()
            .any(|f| f.path.ends_with("big.txt") && f.skipped[0].reason.contains("limit")));
    }

    #[test]
    fn a_bom_and_crlf_are_accepted_and_a_huge_record_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.jsonl");
        let huge: Vec<String> = (0..2500).map(|i| format!("word{i}")).collect();
        let mut bytes = "\u{feff}{\"id\":\"a\",\"title\":\"T\",\"text\":\"first line\"}\r\n"
            .as_bytes()
            .to_vec();
        bytes.extend_from_slice(
            format!(
                "{{\"id\":\"big\",\"title\":\"B\",\"text\":\"{}.\"}}\r\n",
                huge.join(" ")
            )
            .as_bytes(),
        );
        std::fs::write(&p, bytes).unwrap();
        let c = load_path(&p, &LoadOptions::default()).unwrap();
        assert_eq!(c.skipped_count(), 0, "{}", c.load_report(5));
        assert_eq!(c.passages[0].id, "a");
        let big: Vec<_> = c
            .passages
            .iter()
            .filter(|p| p.id.starts_with("big#"))
            .collect();
        assert!(big.len() >= 12, "{} pieces", big.len());
        assert!(big
            .iter()
            .all(|p| p.words() <= LoadOptions::default().chunk.max_words));
        assert!(c.load_report(20).starts_with("loaded"));
    }

    /// The issue's case: a 10 MB passage on one line (2 million words, no sentence breaks) is
    /// cut into passages of the usual size, as a text file and as a JSONL record.
    #[test]
    fn a_ten_megabyte_single_line_passage_is_chunked() {
        let dir = tempfile::tempdir().unwrap();
        let line = "word ".repeat(2_000_000);
        let txt = dir.path().join("one-line.txt");
        std::fs::write(&txt, &line).unwrap();
        let jsonl = dir.path().join("one-line.jsonl");
        std::fs::write(
            &jsonl,
            format!("{{\"id\":\"big\",\"title\":\"B\",\"text\":\"{line}\"}}\n"),
        )
        .unwrap();
        let max = LoadOptions::default().chunk.max_words;
        for path in [&txt, &jsonl] {
            let c = load_path(path, &LoadOptions::default()).unwrap();
            assert_eq!(c.skipped_count(), 0, "{}", c.load_report(5));
            assert!(
                c.passages.len() >= 2_000_000 / max,
                "{} passages",
                c.passages.len()
            );
            assert!(c.passages.iter().all(|p| p.words() <= max));
        }
    }

    #[test]
    fn jsonl_bad_lines_are_skipped_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.jsonl");
        let mut bytes = br#"{"id":"a","title":"T","text":"hello world"}
not json
{"id":"a","title":"T","text":"dup"}
{"id":"b","title":"T","text":"   "}
{"title":"T","text":"no id"}
"#
        .to_vec();
        bytes.extend_from_slice(b"{\"id\":\"c\",\"text\":\"bad \xff utf8\"}\n");
        bytes.extend_from_slice(br#"{"_id":"d","title":"","text":"beir style text here"}"#);
        std::fs::write(&p, bytes).unwrap();
        let c = load_path(&p, &LoadOptions::default()).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.passages[1].title, "beir style text here");
        let sk = &c.files[0].skipped;
        let lines: Vec<_> = sk.iter().map(|s| s.line.unwrap()).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6]);
        assert!(sk[0].reason.contains("invalid JSON"));
        assert!(sk[1].reason.contains("duplicate id `a`"));
        assert!(sk[2].reason.contains("empty"));
        assert!(sk[3].reason.contains("missing `id`"));
        assert!(sk[4].reason.contains("UTF-8"));
    }

    #[test]
    fn folder_of_documents() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("notes.md"),
            "# Search History\n\nBM25 was developed at City University. It ranks documents.",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("plain_text.txt"),
            "Plain text file. Two sentences.",
        )
        .unwrap();
        std::fs::write(dir.path().join("blob.txt"), b"abc\x00def").unwrap();
        std::fs::write(dir.path().join("image.png"), b"png").unwrap();
        let big = dir.path().join("big.txt");
        std::fs::write(&big, vec![b'a'; 2048]).unwrap();
        let opts = LoadOptions {
            max_file_bytes: 1024,
            ..Default::default()
        };
        let c = load_path(dir.path(), &opts).unwrap();
        assert_eq!(c.len(), 2);
        let md = c.passages.iter().find(|p| p.id == "notes#0").unwrap();
        assert_eq!(md.title, "Search History");
        let txt = c.passages.iter().find(|p| p.id == "plain_text#0").unwrap();
        assert_eq!(txt.title, "plain text");
        let reasons: Vec<String> = c
            .files
            .iter()
            .flat_map(|f| {
                f.skipped
                    .iter()
                    .map(move |s| format!("{}: {}", f.path.display(), s.reason))
            })
            .collect();
        assert!(reasons
            .iter()
            .any(|r| r.contains("blob.txt") && r.contains("binary")));
        assert!(reasons
            .iter()
            .any(|r| r.contains("image.png") && r.contains("not a supported")));
        assert!(reasons
            .iter()
            .any(|r| r.contains("big.txt") && r.contains("limit")));
    }

    #[test]
    fn corrupt_pdf_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("broken.pdf"), b"%PDF-1.4 garbage").unwrap();
        std::fs::write(dir.path().join("ok.txt"), "Fine text.").unwrap();
        let c = load_path(dir.path(), &LoadOptions::default()).unwrap();
        assert_eq!(c.len(), 1);
        let f = c
            .files
            .iter()
            .find(|f| f.path.ends_with("broken.pdf"))
            .unwrap();
        assert!(f.skipped[0].reason.contains("PDF"), "{:?}", f.skipped);
    }

    #[test]
    fn nothing_loadable_is_an_error_naming_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.jsonl");
        std::fs::write(&p, "oops\n").unwrap();
        let e = load_path(&p, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.jsonl:1: invalid JSON"), "{e}");
    }

    /// A record that is one enormous "word" (a blob) is skipped with its reason, a Markdown
    /// file's byte-order mark does not stick to its title, and the good records load.
    #[test]
    fn blobs_are_skipped_and_a_markdown_bom_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let blob = "x".repeat(50_000);
        let jsonl = format!(
            "{{\"id\":\"ok\",\"title\":\"T\",\"text\":\"plain words here\"}}\n\
             {{\"id\":\"blob\",\"title\":\"T\",\"text\":\"{blob}\"}}\n"
        );
        std::fs::write(dir.path().join("c.jsonl"), jsonl).unwrap();
        std::fs::write(
            dir.path().join("notes.md"),
            "\u{feff}# My Heading\n\nSome text.",
        )
        .unwrap();
        let c = load_path(dir.path(), &LoadOptions::default()).unwrap();
        assert!(c.index_of("ok").is_some());
        assert!(c.index_of("blob").is_none());
        let skipped: Vec<&Skipped> = c.files.iter().flat_map(|f| &f.skipped).collect();
        assert!(
            skipped
                .iter()
                .any(|s| s.line == Some(2) && s.reason.contains("not text")),
            "{skipped:?}"
        );
        assert!(c
            .passages
            .iter()
            .all(|p| !p.title.contains('\u{feff}') && !p.text.contains('\u{feff}')));
        assert!(
            c.passages.iter().any(|p| p.title == "My Heading"),
            "{:?}",
            c.passages
        );
    }

    proptest::proptest! {
        /// Any bytes at all, as a corpus file or a query file: a named error or a result,
        /// never a panic.
        #[test]
        fn random_bytes_never_panic_the_readers(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("c.jsonl");
            std::fs::write(&p, &bytes).unwrap();
            let _ = load_path(&p, &LoadOptions::default());
            let _ = crate::train::data::load_queries(&p);
            let g = dir.path().join("m.gguf");
            std::fs::write(&g, &bytes).unwrap();
            let _ = crate::model::source::gguf::read_gguf_header(&g);
            let s = dir.path().join("m.safetensors");
            std::fs::write(&s, &bytes).unwrap();
            let _ = candle_core::safetensors::load(&s, &candle_core::Device::Cpu);
        }

        /// JSON-shaped lines with random fields: never a panic either.
        #[test]
        fn random_json_records_never_panic(
            id in "[a-z#]{0,6}",
            title in proptest::prelude::any::<String>(),
            text in proptest::prelude::any::<String>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("c.jsonl");
            let line = serde_json::json!({"id": id, "title": title, "text": text}).to_string();
            std::fs::write(&p, format!("{line}\n{line}\n")).unwrap();
            let _ = load_path(&p, &LoadOptions::default());
        }
    }
}
