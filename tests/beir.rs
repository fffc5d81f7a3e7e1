//! A BEIR folder end to end through `selfret eval`: the corpus and the judged queries of a
//! split load from the same folder, and nDCG@10 and Recall@100 come out as computed by hand.

use std::path::Path;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn eval_reads_a_beir_folder_and_reports_graded_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("qrels")).unwrap();
    write(
        d,
        "corpus.jsonl",
        concat!(
            "{\"_id\": \"d1\", \"title\": \"Zebra\", \"text\": \"zebra stripes savanna\"}\n",
            "{\"_id\": \"d2\", \"title\": \"Zoo\", \"text\": \"zebra in the zoo\"}\n",
            "{\"_id\": \"d3\", \"title\": \"Penguin\", \"text\": \"penguin ice\"}\n",
            "{\"_id\": \"d4\", \"title\": \"Antarctica\", \"text\": \"penguin colony ice ice\"}\n",
        ),
    );
    write(
        d,
        "queries.jsonl",
        concat!(
            "{\"_id\": \"q1\", \"text\": \"zebra stripes\"}\n",
            "{\"_id\": \"q2\", \"text\": \"penguin colony\"}\n",
            "{\"_id\": \"q3\", \"text\": \"only in train\"}\n",
        ),
    );
    // q1: BM25 ranks d1 (both words) above d2; the grades put d2 higher. q2: d4 (the rarer
    // "colony") above d3, the only relevant one.
    write(
        d,
        "qrels/test.tsv",
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\nq2\td3\t1\nq2\td4\t0\n",
    );
    write(
        d,
        "qrels/train.tsv",
        "query-id\tcorpus-id\tscore\nq3\td1\t1\n",
    );
    let json = d.join("eval.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_selfret"))
        .args(["eval", "--corpus"])
        .arg(d)
        .arg("--queries")
        .arg(d)
        .args(["--baselines", "bm25", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("loaded 4 passages"), "{stderr}");
    assert!(
        stderr.contains("2 queries over 4 passages"),
        "the test split only: {stderr}"
    );
    assert!(
        stdout.contains("ndcg@10") && stdout.contains("recall@100"),
        "{stdout}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let m = &v["systems"][0]["metrics"];
    let l3 = 3f64.log2();
    // q1 ranked d1 (grade 1), d2 (grade 2): DCG 1 + 2/log2(3); ideal 2 + 1/log2(3).
    let q1 = (1.0 + 2.0 / l3) / (2.0 + 1.0 / l3);
    // q2 ranked d4 (0), d3 (1): DCG 1/log2(3); ideal 1.
    let q2 = 1.0 / l3;
    let ndcg = m["ndcg@10"].as_f64().unwrap();
    assert!((ndcg - (q1 + q2) / 2.0).abs() < 1e-9, "{ndcg}");
    assert_eq!(m["recall@100"].as_f64().unwrap(), 1.0);
    assert_eq!(m["hits@1"].as_f64().unwrap(), 0.5);
    assert_eq!(m["mrr@5"].as_f64().unwrap(), 0.75);

    // Another split by name; a split the folder lacks is named with those it has.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_selfret"))
        .args(["eval", "--corpus"])
        .arg(d)
        .arg("--queries")
        .arg(d)
        .args(["--baselines", "bm25", "--split", "dev"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("test, train"),
        "{stderr}"
    );
}
