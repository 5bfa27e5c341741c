//! The search page of `partlens serve` in a real browser: Debian's headless Chromium driven
//! through chromedriver's W3C WebDriver HTTP API (spoken directly with ureq, no Selenium).
//! Upload an image, draw a box with the pointer, search, click a result for "more like this",
//! and save a screenshot of the end state.
//!
//! Chromium and chromedriver are installed by [`partlens::setup::ensure_browser`] (apt-get,
//! as root or with passwordless sudo). Where that cannot be done the test prints a
//! `SKIPPED browser test: …` line past the harness's output capture, so it shows in a plain
//! `cargo test` run, and returns; `PARTLENS_REQUIRE_BROWSER=1` turns the skip into a failure.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{ingest_json, s, sample, Server};

/// The query image, inside the bundled Pascal-Part sample.
const IMAGE: &str = "img/val/2008_003228.jpg";
/// The box drawn on it, in the image's own pixels (the one tests/serve.rs queries).
const BOX: [f64; 4] = [140.0, 120.0, 402.0, 372.0];
/// How long any one wait may take.
const WAIT: Duration = Duration::from_secs(15);
/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Writes a line to the stderr file descriptor itself: the test harness captures only the
/// `print!` family, so this shows in a plain `cargo test` run.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A chromedriver process and one headless Chromium session on it. Dropping it ends the
/// session (closing Chromium) and kills chromedriver, also when the test panics.
struct Browser {
    driver: Child,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
    http: ureq::Agent,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start(tools: &partlens::setup::Browser) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new(&tools.chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", tools.chromedriver.display()));
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let profile = tempfile::tempdir().unwrap();
        let mut b = Browser {
            driver,
            session: String::new(),
            http,
            _profile: profile,
        };
        let root = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver to answer /status", || {
            let mut r = b.http.get(format!("{root}/status")).call().ok()?;
            let v: Value = r.body_mut().read_json().ok()?;
            v["value"]["ready"].as_bool().filter(|&r| r)
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": tools.chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1200,900",
                    format!("--user-data-dir={}", b._profile.path().display()),
                ],
            },
        }}});
        b.session = root;
        let v = b.cmd("POST", "", Some(caps));
        let id = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"));
        b.session = format!("{}/session/{id}", b.session);
        b
    }

    /// One WebDriver command (`path` below the session); its `value`, or a panic with the
    /// driver's error.
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = if self.session.contains("/session/") {
            format!("{}{path}", self.session)
        } else {
            format!("{}/session{path}", self.session)
        };
        let res = match (method, body) {
            ("GET", _) => self.http.get(&url).call(),
            ("DELETE", _) => self.http.delete(&url).call(),
            (_, body) => self.http.post(&url).send_json(body.unwrap_or(json!({}))),
        };
        let mut r = res.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = r.status().as_u16();
        let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
        assert_eq!(status, 200, "{method} {path} failed: {v}");
        v["value"].clone()
    }

    /// Runs a script in the page (`arguments` are `args`) and returns its value.
    fn js(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// The element references matching a CSS selector.
    fn all(&self, css: &str) -> Vec<Value> {
        let v = self.cmd(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_array().cloned().unwrap_or_default()
    }

    /// The one element matching a CSS selector.
    fn one(&self, css: &str) -> Value {
        self.all(css)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no element {css}"))
    }

    fn id(element: &Value) -> &str {
        element[ELEMENT].as_str().unwrap()
    }

    fn click(&self, element: &Value) {
        self.cmd(
            "POST",
            &format!("/element/{}/click", Self::id(element)),
            None,
        );
    }

    fn text(&self, element: &Value) -> String {
        let v = self.cmd("GET", &format!("/element/{}/text", Self::id(element)), None);
        v.as_str().unwrap_or_default().to_string()
    }

    fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.session.contains("/session/") {
            let _ = self.http.delete(&self.session).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Polls `check` every 100 ms until it gives a value; panics naming `what` after [`WAIT`].
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Standard base64 (the screenshot WebDriver returns) to bytes.
fn base64(text: &str) -> Vec<u8> {
    let digit = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c:?}"),
    };
    let clean: Vec<u8> = text.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | (u32::from(digit(c)) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// Where the screenshot goes: the Cargo target folder of this build.
fn screenshot_path() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_partlens")); // TARGET/release/partlens
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
        .join("browser-test.png")
}

#[test]
fn upload_draw_a_box_search_and_click_a_result_in_chromium() {
    let tools = match partlens::setup::ensure_browser() {
        Ok(t) => t,
        Err(why) if std::env::var_os("PARTLENS_REQUIRE_BROWSER").is_none() => {
            say(&format!("SKIPPED browser test: {why}"));
            return;
        }
        Err(why) => panic!("PARTLENS_REQUIRE_BROWSER is set but: {why}"),
    };
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("pp");
    ingest_json(&sample("pascal_part"), &[], &index);
    let server = Server::start(&["--index", &format!("pp={}", s(&index))]);
    let b = Browser::start(&tools);
    b.cmd(
        "POST",
        "/url",
        Some(json!({"url": format!("{}/", server.base)})),
    );
    wait_for("the page to list the index", || {
        let info = b.text(&b.one("#index-info"));
        info.contains("regions").then_some(())
    });

    // Upload: a file input takes the file's path as typed text.
    let image = sample("pascal_part").join(IMAGE);
    let (w, h) = image::image_dimensions(&image).unwrap();
    let file = b.one("#file");
    b.cmd(
        "POST",
        &format!("/element/{}/value", Browser::id(&file)),
        Some(json!({"text": s(&image)})),
    );
    let canvas = b.one("#canvas");
    wait_for("the uploaded image on the canvas", || {
        b.js(
            "const c = arguments[0]; return !c.hidden && c.getBoundingClientRect().width > 0;",
            json!([canvas]),
        )
        .as_bool()
        .filter(|&shown| shown)
    });

    // Draw the box with the mouse: press at one corner, drag, release at the other.
    b.js(
        "arguments[0].scrollIntoView({block: 'center'});",
        json!([canvas]),
    );
    let rect = b.cmd(
        "GET",
        &format!("/element/{}/rect", Browser::id(&canvas)),
        None,
    );
    let (cw, ch) = (
        rect["width"].as_f64().unwrap(),
        rect["height"].as_f64().unwrap(),
    );
    // Offsets from the canvas's centre (the origin of an element pointer move), in CSS px.
    let at = |x: f64, y: f64| {
        json!({
            "type": "pointerMove", "duration": 50, "origin": canvas,
            "x": (x / f64::from(w) * cw - cw / 2.0).round() as i64,
            "y": (y / f64::from(h) * ch - ch / 2.0).round() as i64,
        })
    };
    let mid = at((BOX[0] + BOX[2]) / 2.0, (BOX[1] + BOX[3]) / 2.0);
    b.cmd(
        "POST",
        "/actions",
        Some(json!({"actions": [{
            "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
            "actions": [
                at(BOX[0], BOX[1]),
                {"type": "pointerDown", "button": 0},
                mid,
                at(BOX[2], BOX[3]),
                {"type": "pointerUp", "button": 0},
            ],
        }]})),
    );
    b.cmd("DELETE", "/actions", None);
    let drawn = b.js("return document.getElementById('box').value;", json!([]));
    let drawn: Vec<f64> = drawn
        .as_str()
        .unwrap_or_default()
        .split(',')
        .filter_map(|n| n.parse().ok())
        .collect();
    // One CSS pixel of the drawing is w / cw image pixels; rounding adds one more.
    let tol = (f64::from(w) / cw).ceil() + 1.0;
    assert!(
        drawn.len() == 4
            && drawn
                .iter()
                .zip(BOX)
                .all(|(d, want)| (d - want).abs() <= tol),
        "#box holds {drawn:?} after drawing {BOX:?} (tolerance {tol} px)"
    );

    // Search from the drawn box.
    b.click(&b.one("#search"));
    let hits = wait_for("#results .hit after Search", || {
        let hits = b.all("#results .hit");
        let url = b.url();
        (!hits.is_empty() && url.contains("box=")).then_some(hits)
    });
    let first = b.text(&b.one("#results .hit .hit-label"));
    assert!(!first.trim().is_empty(), "the first hit has no label");
    assert!(hits.len() >= 2, "only {} hit(s)", hits.len());

    // "More like this" from the second hit.
    let second = &hits[1];
    let id = b.js("return arguments[0].dataset.id;", json!([second]));
    let id = id.as_str().unwrap().to_string();
    b.click(second);
    wait_for(&format!("the URL hash to hold similar={id}"), || {
        b.url().contains(&format!("similar={id}")).then_some(())
    });
    wait_for(&format!("#query-region to show region #{id}"), || {
        let q = b.text(&b.one("#query-region"));
        q.contains(&format!("More like #{id}")).then_some(())
    });
    wait_for(&format!("results reloaded around region #{id}"), || {
        let busy = b.js(
            "return document.getElementById('results').getAttribute('aria-busy');",
            json!([]),
        );
        let marked = b.all(&format!("#results .hit.is-query[data-id='{id}']"));
        (busy == "false" && !marked.is_empty()).then_some(())
    });
    let error = b.js(
        "return document.getElementById('error').textContent;",
        json!([]),
    );
    assert_eq!(error, "", "the page shows an error");
    wait_for(
        "the query region's and the first hits' thumbnails to load",
        || {
            b.js(
                "const imgs = [document.querySelector('#query-region img'),
                           ...[...document.querySelectorAll('#results .hit img')].slice(0, 3)];
             return imgs.every((i) => i && i.complete && i.naturalWidth > 0);",
                json!([]),
            )
            .as_bool()
            .filter(|&loaded| loaded)
        },
    );

    b.js("window.scrollTo(0, 0);", json!([]));
    let png = base64(b.cmd("GET", "/screenshot", None).as_str().unwrap());
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
    let path = screenshot_path();
    std::fs::write(&path, &png).unwrap();
    say(&format!(
        "browser test: first hit {first:?}, more like #{id}; screenshot {} ({:.1} s)",
        path.display(),
        t0.elapsed().as_secs_f64()
    ));
}
