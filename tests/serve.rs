//! `partlens serve` end to end: the real binary on an ephemeral loopback port, driven by a real
//! HTTP client (ureq). Results equal the CLI's for the same crop, "similar" equals a search with
//! the stored vector, every malformed request gets a 4xx JSON error and the server keeps
//! serving, and SIGTERM ends it cleanly.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{ingest_json, json, s, sample, Server};

/// The bundled Pascal-Part sample's index (MobileNetV2), made once per test binary.
fn index() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let d = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pp");
        ingest_json(&sample("pascal_part"), &[], &p);
        (dir, p)
    });
    &d.1
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// (status, body as JSON).
fn get(url: &str) -> (u16, serde_json::Value) {
    let mut r = agent().get(url).call().unwrap();
    let status = r.status().as_u16();
    (
        status,
        r.body_mut().read_json().unwrap_or(serde_json::Value::Null),
    )
}

fn post(url: &str, ctype: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let mut r = agent()
        .post(url)
        .header("Content-Type", ctype)
        .send(body)
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        r.body_mut().read_json().unwrap_or(serde_json::Value::Null),
    )
}

/// Sends only the headers of a POST announcing a `len`-byte image, and reads the answer: the
/// server must refuse an upload over its limit from `Content-Length` alone. (Sending the whole
/// body would race the server's early answer and close: a broken pipe, not a status.)
fn announce(url: &str, len: usize) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut c = std::net::TcpStream::connect(host).unwrap();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    // The JSON object of the body (chunked encoding would wrap it in size lines).
    let json = body
        .find('{')
        .and_then(|a| body.rfind('}').map(|b| &body[a..=b]))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// Ids and scores (float32, as computed) of a hits array.
fn ids_scores(v: &serde_json::Value) -> Vec<(u64, f32)> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a hits array: {v}"))
        .iter()
        .map(|h| {
            (
                h["id"].as_u64().unwrap(),
                h["score"].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

const IMAGE: &str = "img/val/2008_003228.jpg";
const BOX: &str = "140,120,402,372";

#[test]
fn queries_equal_the_cli_and_similar_equals_the_stored_vector() {
    let idx = index();
    let mut srv = Server::start(&["--index", &format!("pp={}", s(idx))]);
    let image = sample("pascal_part").join(IMAGE);
    let bytes = std::fs::read(&image).unwrap();
    let cli = json(&[
        "--device",
        "cpu",
        "query",
        "--index",
        s(idx),
        "--image",
        s(&image),
        "--box",
        BOX,
        "-k",
        "7",
        "--json",
    ]);
    let (st, raw) = post(
        &srv.url(&format!("/v1/query?box={BOX}&k=7")),
        "image/jpeg",
        &bytes,
    );
    assert_eq!(st, 200, "{raw}");
    assert_eq!(
        raw, cli,
        "the server's answer differs from partlens query --json"
    );
    // The same as multipart.
    let boundary = "XpartlensX";
    let mut mp = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.jpg\"\r\n\
         Content-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    mp.extend_from_slice(&bytes);
    mp.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let (st, multi) = post(
        &srv.url(&format!("/v1/query?index=pp&box={BOX}&k=7")),
        &format!("multipart/form-data; boundary={boundary}"),
        &mp,
    );
    assert_eq!(st, 200, "{multi}");
    assert_eq!(ids_scores(&multi), ids_scores(&cli));
    // "More like this" = a search with the stored vector, through the library.
    let id = cli[1]["id"].as_u64().unwrap();
    let (st, sim) = get(&srv.url(&format!("/v1/regions/pp/{id}/similar?k=5&kind=part")));
    assert_eq!(st, 200, "{sim}");
    let engine = partlens::query::QueryEngine::open(idx, &common::cpu()).unwrap();
    let opts = partlens::query::SearchOptions {
        k: 5,
        kind: Some(partlens::RegionKind::Part),
        ..Default::default()
    };
    let row = engine
        .index()
        .feature(partlens::Feature::Mean)
        .unwrap()
        .row(id as usize);
    let lib = engine.search_vector(row, &opts).unwrap();
    let want: Vec<(u64, f32)> = lib.iter().map(|h| (h.id, h.score)).collect();
    assert_eq!(ids_scores(&sim), want);
    // Metadata, thumbnail, index list, metrics.
    let (st, meta) = get(&srv.url(&format!("/v1/regions/pp/{id}")));
    assert_eq!(st, 200);
    assert_eq!(meta["id"], id);
    assert_eq!(meta["index"], "pp");
    assert!(meta.get("score").is_none());
    let mut r = agent()
        .get(&srv.url(&format!("/v1/regions/pp/{id}/thumbnail")))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let jpeg = r.body_mut().read_to_vec().unwrap();
    assert!(jpeg.starts_with(&[0xFF, 0xD8]), "not a JPEG");
    let (_, list) = get(&srv.url("/v1/indexes"));
    assert_eq!(list[0]["name"], "pp");
    assert_eq!(list[0]["counts"]["regions"], 254);
    let metrics = agent()
        .get(&srv.url("/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("partlens_requests_total{route=\"/v1/query\",status=\"200\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("partlens_encoder_batch_size_count"),
        "{metrics}"
    );
    // The page is served, offline (no external URL).
    let page = agent()
        .get(&srv.url("/"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(page.contains("<html") && !page.contains("https://"), "page");
    // SIGTERM: a clean exit.
    assert!(srv.stop().success());
}

/// A small PNG file claiming `w × h` pixels (a decompression bomb's header: signature,
/// IHDR, a tiny IDAT and IEND).
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8], out: &mut Vec<u8>| {
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        let mut crc = flate2::Crc::new();
        crc.update(&body);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(b"IHDR", &ihdr, &mut out);
    chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        &mut out,
    );
    chunk(b"IEND", &[], &mut out);
    out
}

#[test]
fn malformed_requests_get_json_errors_and_the_server_keeps_serving() {
    let idx = index();
    let srv = Server::start(&[
        "--index",
        &format!("pp={}", s(idx)),
        "--index",
        &format!("again={}", s(idx)),
        "--max-upload-mb",
        "1",
    ]);
    let jpeg = std::fs::read(sample("pascal_part").join(IMAGE)).unwrap();
    let q = |params: &str, ctype: &str, body: &[u8]| {
        post(&srv.url(&format!("/v1/query?{params}")), ctype, body)
    };
    let cases: Vec<(&str, (u16, serde_json::Value), &str)> = vec![
        (
            "two indexes, none named",
            q("k=3", "image/jpeg", &jpeg),
            "several indexes",
        ),
        (
            "unknown index",
            q("index=nope", "image/jpeg", &jpeg),
            "no index named",
        ),
        (
            "dot-dot index",
            q("index=..%2F..%2Fetc", "image/jpeg", &jpeg),
            "no index named",
        ),
        ("k = 0", q("index=pp&k=0", "image/jpeg", &jpeg), "k must be"),
        (
            "k huge",
            q("index=pp&k=99999999999", "image/jpeg", &jpeg),
            "k must be",
        ),
        (
            "unknown feature",
            q("index=pp&feature=nope", "image/jpeg", &jpeg),
            "unknown feature",
        ),
        (
            "unknown label",
            q("index=pp&label=..%2Fx", "image/jpeg", &jpeg),
            "matches no region",
        ),
        (
            "unknown kind",
            q("index=pp&kind=thing", "image/jpeg", &jpeg),
            "kind must be",
        ),
        (
            "unknown parameter",
            q("index=pp&path=%2Fetc%2Fpasswd", "image/jpeg", &jpeg),
            "unknown parameter",
        ),
        (
            "box outside",
            q("index=pp&box=5000,5000,6000,6000", "image/jpeg", &jpeg),
            "outside",
        ),
        (
            "box malformed",
            q("index=pp&box=1,2,3", "image/jpeg", &jpeg),
            "box must be",
        ),
        (
            "not an image",
            q("index=pp", "image/jpeg", b"hello, this is text"),
            "not an image",
        ),
        (
            "wrong type",
            q("index=pp", "application/json", b"{}"),
            "multipart",
        ),
        ("empty body", q("index=pp", "image/png", b""), "no image"),
        (
            "bomb header",
            q("index=pp", "image/png", &png_header(100_000, 100_000)),
            "pixels",
        ),
        (
            "too large",
            announce(&srv.url("/v1/query?index=pp"), 2 << 20),
            "limit",
        ),
        (
            "bad multipart",
            q(
                "index=pp",
                "multipart/form-data; boundary=zz",
                b"--zz\r\nnonsense",
            ),
            "multipart",
        ),
        (
            "unknown region",
            get(&srv.url("/v1/regions/pp/99999")),
            "no region",
        ),
        (
            "region not a number",
            get(&srv.url("/v1/regions/pp/abc/similar")),
            "no region",
        ),
        (
            "similar unknown filter",
            get(&srv.url("/v1/regions/pp/1/similar?object=nope")),
            "matches no region",
        ),
        (
            "unknown route",
            get(&srv.url("/v1/../../etc/passwd")),
            "no such route",
        ),
        (
            "wrong method",
            get(&srv.url("/v1/query")),
            "GET is not allowed on /v1/query",
        ),
        (
            "wrong method on a region",
            post(&srv.url("/v1/regions/pp/1"), "image/jpeg", &jpeg),
            "POST is not allowed",
        ),
        (
            "index name not UTF-8",
            get(&srv.url("/v1/regions/%FF/1/thumbnail")),
            "malformed path",
        ),
    ];
    for (what, (status, body), needle) in cases {
        assert!(
            (400..500).contains(&status),
            "{what}: status {status}, {body}"
        );
        let msg = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error field in {body}"));
        assert!(msg.contains(needle), "{what}: {msg:?} lacks {needle:?}");
    }
    // A 405 still says which methods the route takes.
    let r = agent().get(&srv.url("/v1/query")).call().unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers().get("allow").unwrap(), "POST");
    let mut r = agent().get(&srv.url("/healthz")).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.body_mut().read_to_string().unwrap(), "ok\n");
    let (st, hits) = q("index=again&k=2", "image/jpeg", &jpeg);
    assert_eq!(st, 200, "{hits}");
    assert_eq!(hits.as_array().unwrap().len(), 2);
}

#[test]
fn bad_command_lines_are_refused_before_serving() {
    let idx = index();
    let e = common::err(&["serve", "--index", "/no/such/index"]);
    assert!(e.contains("/no/such/index"), "{e}");
    let e = common::err(&["serve", "--index", s(idx), "--index", s(idx)]);
    assert!(e.contains("two indexes are named"), "{e}");
    let e = common::err(&["serve", "--index", s(idx), "--timeout-s", "0"]);
    assert!(e.contains("--timeout-s"), "{e}");
}

#[test]
fn concurrent_queries_are_batched_and_each_gets_its_own_answer() {
    let idx = index();
    // Six crops, a batch of six at most, and a wait long enough that all six join it.
    let srv = Server::start(&[
        "--index",
        s(idx),
        "--max-batch",
        "6",
        "--batch-wait-ms",
        "1000",
    ]);
    let image = sample("pascal_part").join(IMAGE);
    let jpeg = std::fs::read(&image).unwrap();
    let boxes = [
        "140,120,402,372",
        "10,10,200,200",
        "200,50,480,300",
        "0,0,100,375",
        "300,200,500,375",
        "50,150,250,350",
    ];
    let together: Vec<_> = std::thread::scope(|sc| {
        let hs: Vec<_> = boxes
            .iter()
            .map(|b| {
                let (url, jpeg) = (srv.url(&format!("/v1/query?box={b}&k=5")), &jpeg);
                sc.spawn(move || post(&url, "image/jpeg", jpeg))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Each answer is its own crop's: the library embeds each crop alone.
    let engine = partlens::query::QueryEngine::open(idx, &common::cpu()).unwrap();
    let opts = partlens::query::SearchOptions {
        k: 5,
        ..Default::default()
    };
    for (b, (status, t)) in boxes.iter().zip(&together) {
        assert_eq!(*status, 200, "{b}: {t}");
        let v: Vec<i64> = b.split(',').map(|x| x.parse().unwrap()).collect();
        let bbox = partlens::PixelBox {
            x0: v[0],
            y0: v[1],
            x1: v[2],
            y1: v[3],
        };
        let want = engine.search_image_file(&image, Some(bbox), &opts).unwrap();
        let t = ids_scores(t);
        assert_eq!(t.len(), want.len(), "{b}");
        for ((it, st), w) in t.iter().zip(&want) {
            // The same regions; scores equal up to the encoder's batch-size rounding.
            assert_eq!(*it, w.id, "{b}");
            assert!((st - w.score).abs() < 1e-4, "{b}: {st} vs {}", w.score);
        }
    }
    let metrics = agent()
        .get(&srv.url("/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    // The six crops ran as one encoder batch.
    assert_eq!(value("partlens_encoder_batch_size_sum"), 6.0, "{metrics}");
    assert_eq!(value("partlens_encoder_batch_size_count"), 1.0, "{metrics}");
}

#[test]
fn sigterm_finishes_the_requests_in_flight() {
    let idx = index();
    // A crop waits up to 1 s for company in its batch: it is in flight when SIGTERM comes.
    let mut srv = Server::start(&[
        "--index",
        s(idx),
        "--max-batch",
        "4",
        "--batch-wait-ms",
        "1000",
    ]);
    let jpeg = std::fs::read(sample("pascal_part").join(IMAGE)).unwrap();
    let url = srv.url("/v1/query?k=3");
    let t = std::thread::spawn(move || post(&url, "image/jpeg", &jpeg));
    std::thread::sleep(std::time::Duration::from_millis(400));
    let status = srv.stop();
    let (st, hits) = t.join().unwrap();
    assert_eq!(st, 200, "the request in flight was not finished: {hits}");
    assert_eq!(hits.as_array().unwrap().len(), 3);
    assert!(status.success(), "{status:?}");
}
