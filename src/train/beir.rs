//! Query sets in the BEIR layout: a folder with `queries.jsonl` (`{"_id", "text"}` lines) and
//! `qrels/{split}.tsv` (a `query-id corpus-id score` header, then tab-separated lines with an
//! integer relevance grade). Every judged query of the split becomes a [`Query`] whose
//! `positive_ids` are its passages of grade above zero (highest grade first) and whose
//! `relevance` keeps every grade, for nDCG.

use super::data::Query;
use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;

/// True when `dir` looks like a BEIR query folder.
pub fn is_beir_folder(dir: &Path) -> bool {
    dir.is_dir() && dir.join("queries.jsonl").is_file()
}

/// The splits a folder has qrels for (`qrels/*.tsv`), sorted.
pub fn splits(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir.join("qrels"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    name.strip_suffix(".tsv").map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Reads the lines of a text file with their 1-based numbers, a leading byte-order mark and
/// CRLF line ends removed; invalid UTF-8 is an error naming the line.
fn lines(path: &Path) -> Result<Vec<(usize, String)>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, bytes) in std::io::BufReader::new(f).split(b'\n').enumerate() {
        let bytes = bytes.map_err(|e| Error::io(path, e))?;
        let line = String::from_utf8(bytes).map_err(|_| Error::BadLine {
            path: path.to_path_buf(),
            line: i + 1,
            message: "invalid UTF-8".into(),
        })?;
        let line = line.strip_prefix('\u{feff}').unwrap_or(&line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if !line.trim().is_empty() {
            out.push((i + 1, line.to_string()));
        }
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
struct BeirQuery {
    #[serde(rename = "_id")]
    id: String,
    text: String,
}

/// Loads the judged queries of `split` from a BEIR folder. A query the qrels judge but
/// `queries.jsonl` lacks is kept with an empty question, so the evaluation names it as
/// unscorable instead of dropping it silently.
pub fn load_beir_queries(dir: &Path, split: &str) -> Result<Vec<Query>> {
    let qpath = dir.join("queries.jsonl");
    let mut texts: HashMap<String, String> = HashMap::new();
    for (line, text) in lines(&qpath)? {
        let q: BeirQuery = serde_json::from_str(&text).map_err(|e| Error::BadLine {
            path: qpath.clone(),
            line,
            message: format!("not a BEIR query (\"_id\", \"text\"): {e}"),
        })?;
        texts.insert(q.id, q.text);
    }
    let rpath = dir.join("qrels").join(format!("{split}.tsv"));
    if !rpath.is_file() {
        let have = splits(dir);
        return Err(Error::bad_file(
            &rpath,
            if have.is_empty() {
                "no qrels: a BEIR folder needs qrels/{split}.tsv".to_string()
            } else {
                format!(
                    "no qrels for split {split:?}; this folder has: {}",
                    have.join(", ")
                )
            },
        ));
    }
    let mut order: Vec<String> = Vec::new();
    let mut judged: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for (line, text) in lines(&rpath)? {
        let cols: Vec<&str> = text.split('\t').map(str::trim).collect();
        if cols.first() == Some(&"query-id") {
            continue;
        }
        let bad = |message: String| Error::BadLine {
            path: rpath.clone(),
            line,
            message,
        };
        let [qid, did, grade] = cols[..] else {
            return Err(bad(format!(
                "expected 3 tab-separated columns (query-id, corpus-id, score), found {}",
                cols.len()
            )));
        };
        let grade: i64 = grade
            .parse()
            .map_err(|_| bad(format!("the score {grade:?} is not an integer")))?;
        if !judged.contains_key(qid) {
            order.push(qid.to_string());
        }
        judged
            .entry(qid.to_string())
            .or_default()
            .push((did.to_string(), grade));
    }
    if order.is_empty() {
        return Err(Error::bad_file(&rpath, "no judgements in the file"));
    }
    Ok(order
        .into_iter()
        .map(|qid| {
            let mut docs = judged.remove(&qid).unwrap_or_default();
            // Highest grade first; the file's order among equals.
            docs.sort_by_key(|(_, g)| std::cmp::Reverse(*g));
            let relevance: BTreeMap<String, u32> = docs
                .iter()
                .map(|(d, g)| (d.clone(), (*g).max(0) as u32))
                .collect();
            Query {
                question: texts.get(&qid).cloned().unwrap_or_default(),
                id: qid,
                answers: Vec::new(),
                positive_ids: docs
                    .iter()
                    .filter(|(_, g)| *g > 0)
                    .map(|(d, _)| d.clone())
                    .collect(),
                answer_passage_ids: Vec::new(),
                relevance,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_beir_folder_loads_its_split_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("qrels")).unwrap();
        std::fs::write(
            d.join("queries.jsonl"),
            "\u{feff}{\"_id\": \"q1\", \"text\": \"first question\"}\r\n{\"_id\": \"q2\", \"text\": \"second\", \"metadata\": {}}\n{\"_id\": \"q3\", \"text\": \"not judged in test\"}\n",
        )
        .unwrap();
        std::fs::write(
            d.join("qrels/test.tsv"),
            "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\nq1\td3\t0\nq2\td3\t1\nq9\td1\t1\n",
        )
        .unwrap();
        std::fs::write(
            d.join("qrels/train.tsv"),
            "query-id\tcorpus-id\tscore\nq3\td2\t1\n",
        )
        .unwrap();
        assert!(is_beir_folder(d));
        assert_eq!(splits(d), vec!["test".to_string(), "train".to_string()]);
        let qs = load_beir_queries(d, "test").unwrap();
        assert_eq!(qs.len(), 3);
        assert_eq!(qs[0].question, "first question");
        assert_eq!(
            qs[0].positive_ids,
            ids(&["d2", "d1"]),
            "highest grade first, grade 0 left out"
        );
        assert_eq!(qs[0].relevance.get("d3"), Some(&0));
        assert_eq!(qs[1].positive_ids, ids(&["d3"]));
        assert_eq!(qs[2].id, "q9");
        assert!(
            qs[2].question.is_empty(),
            "judged but missing: kept as unscorable"
        );
        assert_eq!(
            load_beir_queries(d, "train").unwrap()[0].question,
            "not judged in test"
        );
        let e = load_beir_queries(d, "dev").unwrap_err().to_string();
        assert!(e.contains("dev.tsv") && e.contains("test, train"), "{e}");
        std::fs::write(
            d.join("qrels/test.tsv"),
            "query-id\tcorpus-id\tscore\nq1\td1\thigh\n",
        )
        .unwrap();
        let e = load_beir_queries(d, "test").unwrap_err().to_string();
        assert!(
            e.contains("test.tsv:2") && e.contains("not an integer"),
            "{e}"
        );
        std::fs::write(d.join("queries.jsonl"), "{\"id\": 3}\n").unwrap();
        let e = load_beir_queries(d, "test").unwrap_err().to_string();
        assert!(e.contains("queries.jsonl:1"), "{e}");
    }
}
