//! The web console on a real three-node mesh building a real git repository: every page, the
//! escaping of what builds print, badges, the event stream and its replay, the `web` address
//! that serves the pages and nothing else; then the same pages in a real headless Chromium
//! (Debian's `chromium` and `chromium-driver`), which sees a builder turn red without a reload.
//! One file for the console, sharing its fixture, hence its length.

use std::time::Duration;

use buildmesh_tests::{GitRepo, Mesh, wait_for};

const LONG: Duration = Duration::from_secs(90);

/// A builder named as CPython names them: spaces, dots.
const BUILDER: &str = "AMD64 Debian root 3.x";

/// `ci.sh` prints markup and colours, then passes or fails as the commit's `mode` says.
const CI: &str = r#"#!/bin/sh
echo "building $BUILDMESH_SHA"
echo '<script>window.pwned = 1</script><b>bold?</b>'
printf '\033[31mcoloured red\033[0m\n'
if [ "$(cat mode)" = fail ]; then echo "FAIL: test_web (test.test_console)"; exit 1; fi
echo "all tests passed"
"#;

fn builders(repo: &str) -> String {
    format!(
        r#"
[[builder]]
name = "{BUILDER}"
repo = "{repo}"
branches = ["main"]
tags = ["stable", "tier-1"]
requires = {{ os = "linux" }}
[[builder.step]]
name = "test suite"
run = "sh ci.sh"
"#
    )
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("the node answers");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

async fn mesh_with_console() -> (Mesh, GitRepo) {
    let mesh = Mesh::start_with(3, |i, c| {
        c.announcer.poll_interval = None;
        if i == 0 {
            c.web = Some("127.0.0.1:0".parse().unwrap());
        }
    })
    .await;
    mesh.wait_ready().await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    mesh.publish_builders(0, &builders(&repo.url())).await;
    (mesh, repo)
}

/// Reads server-sent events from `resp` until one satisfies `want`; returns (id, name, data).
async fn next_event(
    resp: &mut reqwest::Response,
    buf: &mut String,
    want: impl Fn(&str, &str) -> bool,
) -> (u64, String, String) {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut name, mut data) = (0, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().unwrap_or(0);
                } else if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !name.is_empty() && want(&name, &data) {
                return (id, name, data);
            }
        }
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("an event in time")
            .expect("the stream stays open")
            .expect("the stream does not end");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_shows_the_mesh_escapes_what_builds_print_and_streams_changes() {
    let (mesh, repo) = mesh_with_console().await;
    let api = format!("http://{}", mesh.node(0).api);
    let web = format!("http://{}", mesh.node(0).web.expect("a web address"));

    let green = repo.commit("main", &[("ci.sh", CI), ("mode", "pass")], "green");
    mesh.announce(0, &repo.url(), "main", &green).await;
    mesh.wait_build(0, BUILDER, &green, LONG, |r| r == "success")
        .await;

    // Follow the events from here.
    let mut events = reqwest::get(format!("{web}/events")).await.unwrap();
    assert_eq!(events.status(), 200);
    assert!(
        events.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut buf = String::new();

    let red = repo.commit(
        "main",
        &[("ci.sh", CI), ("mode", "fail")],
        "break the console test",
    );
    mesh.announce(0, &repo.url(), "main", &red).await;
    let (id, _, data) = next_event(&mut events, &mut buf, |name, data| {
        name == "build" && data.contains(&red) && data.contains("\"failure\"")
    })
    .await;
    let event: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(event["builder"], BUILDER);
    let build = mesh
        .wait_build(0, BUILDER, &red, LONG, |r| r == "failure")
        .await;

    // Reconnecting with the id before it replays it.
    let mut again = reqwest::Client::new()
        .get(format!("{web}/events"))
        .header("Last-Event-ID", (id - 1).to_string())
        .send()
        .await
        .unwrap();
    let mut buf2 = String::new();
    let (replayed, name, _) = next_event(&mut again, &mut buf2, |_, _| true).await;
    assert_eq!((replayed, name.as_str()), (id, "build"));

    // The dashboard names the builder, the commit where its streak began, the failing step.
    let (status, page) = get(&format!("{web}/")).await;
    assert_eq!(status, 200);
    assert!(page.contains(BUILDER), "{page}");
    assert!(
        page.contains("main: 1 of 1 stable builders failing"),
        "{page}"
    );
    assert!(page.contains(&red[..10]), "{page}");
    assert!(page.contains("test suite"), "{page}");
    assert!(page.contains("tier-1"), "{page}");

    // The console: one cell per build, linking to it, agreeing with the API.
    let builds: Vec<serde_json::Value> = reqwest::get(format!("{api}/api/v1/builds"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (_, console) = get(&format!("{web}/console?branch=main&tag=stable")).await;
    for b in &builds {
        let cell = format!(
            "data-result=\"{}\"><a href=\"/builds/{}\"",
            b["result"].as_str().unwrap(),
            b["id"].as_str().unwrap()
        );
        assert!(console.contains(&cell), "{cell} not in {console}");
    }
    let (_, other_tag) = get(&format!("{web}/console?tag=nightly")).await;
    assert!(!other_tag.contains(&build.id), "{other_tag}");

    // The build page: steps, the log escaped (text, not markup), colours rendered.
    let (status, page) = get(&format!("{web}/builds/{}", build.id)).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("&lt;script&gt;window.pwned = 1&lt;/script&gt;"),
        "{page}"
    );
    assert!(!page.contains("<script>window.pwned"), "{page}");
    assert!(!page.contains("<b>bold?</b>"), "{page}");
    assert!(page.contains("coloured red</span>"), "{page}");
    assert!(!page.contains("\u{1b}["), "{page}");
    assert!(page.contains("class=\"line fail\""), "{page}");
    assert!(page.contains("id=\"test%20suite-L3\""), "{page}");
    // The raw log is the bytes as printed, as a download.
    let raw = reqwest::get(format!("{web}/builds/{}/raw?step=test%20suite", build.id))
        .await
        .unwrap();
    assert!(
        raw.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    assert!(
        raw.text()
            .await
            .unwrap()
            .contains("<script>window.pwned = 1</script>")
    );

    // The builder page, by its name percent-encoded and by its safe id.
    let safe = buildmesh_protocol::builders::safe_id(BUILDER);
    for b in ["AMD64%20Debian%20root%203.x", safe.as_str()] {
        let (status, page) = get(&format!("{web}/builders/{b}")).await;
        assert_eq!(status, 200, "{b}");
        assert!(page.contains(&build.id), "{page}");
        let (status, svg) = get(&format!("{web}/badge/{b}/main.svg")).await;
        assert_eq!(status, 200);
        assert!(svg.starts_with("<svg") && svg.contains("failing"), "{svg}");
    }
    let (_, svg) = get(&format!("{web}/badge/main.svg")).await;
    assert!(svg.contains("failing"), "{svg}");
    let (status, _) = get(&format!("{web}/builders/nobody")).await;
    assert_eq!(status, 404);

    // Workers and notifier.
    let (_, page) = get(&format!("{web}/workers")).await;
    for n in mesh.nodes.iter().flatten() {
        assert!(page.contains(&n.name), "{page}");
    }
    let (status, page) = get(&format!("{web}/notifier")).await;
    assert_eq!(status, 200);
    assert!(page.contains("Term"), "{page}");

    // The web address serves the pages, not the API; the API address serves both.
    let (status, _) = get(&format!("{web}/api/v1/status")).await;
    assert_eq!(status, 404);
    let submit = reqwest::Client::new()
        .post(format!("{web}/api/v1/submit"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert!(submit.status().is_client_error());
    assert_eq!(get(&format!("{api}/console")).await.0, 200);
    assert_eq!(get(&format!("{api}/api/v1/status")).await.0, 200);
    mesh.shutdown().await;
}

// ---- in a real browser ----

/// A chromedriver of its own, killed on drop.
struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// The chromedriver to use: BUILDMESH_CHROMEDRIVER, or `chromedriver` on the PATH. None when
// there is none and the browser test is not required (BUILDMESH_BROWSER_TESTS=require, as CI
// sets it, makes a missing driver a failure).
fn chromedriver() -> Option<std::path::PathBuf> {
    let required = std::env::var("BUILDMESH_BROWSER_TESTS").as_deref() == Ok("require");
    let found = std::env::var_os("BUILDMESH_CHROMEDRIVER")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("chromedriver"))
                    .find(|f| f.is_file())
            })
        });
    if found.is_none() {
        assert!(
            !required,
            "BUILDMESH_BROWSER_TESTS=require, and no chromedriver (apt install chromium chromium-driver)"
        );
        eprintln!(
            "browser test not run: no chromedriver (apt install chromium chromium-driver to run it)"
        );
    }
    found
}

async fn browser(path: &std::path::Path) -> (Driver, fantoccini::Client) {
    let port = buildmesh_tests::free_port_base(1) + 10;
    let child = std::process::Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver(child);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--window-size=1280,1000"]}),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match fantoccini::ClientBuilder::new(
            hyper_util::client::legacy::connect::HttpConnector::new(),
        )
        .capabilities(caps.clone())
        .connect(&url)
        .await
        {
            Ok(c) => return (driver, c),
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("no browser session from chromedriver: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Where screenshots go: `target/browser-screenshots` (CI keeps them as artifacts).
fn shot_dir() -> std::path::PathBuf {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn shot(c: &fantoccini::Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    std::fs::write(shot_dir().join(format!("{name}.png")), png).expect("saved");
}

async fn text_of(c: &fantoccini::Client, css: &str) -> String {
    c.find(fantoccini::Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_browser_a_red_build_reaches_the_open_console_and_dashboard_without_a_reload() {
    let Some(driver_path) = chromedriver() else {
        return;
    };
    let (mesh, repo) = mesh_with_console().await;
    let web = format!("http://{}", mesh.node(1).api);
    let green = repo.commit("main", &[("ci.sh", CI), ("mode", "pass")], "green");
    mesh.announce(0, &repo.url(), "main", &green).await;
    let built = mesh
        .wait_build(1, BUILDER, &green, LONG, |r| r == "success")
        .await;

    let (_driver, c) = browser(&driver_path).await;
    // Every page loads and shows what the API says.
    for (path, name) in [
        ("/", "dashboard"),
        ("/console", "console"),
        ("/workers", "workers"),
        ("/notifier", "notifier"),
    ] {
        c.goto(&format!("{web}{path}")).await.unwrap();
        let h1 = text_of(&c, "main h1").await;
        assert!(!h1.is_empty(), "{path}");
        shot(&c, name).await;
    }
    c.goto(&format!("{web}/workers")).await.unwrap();
    let workers = text_of(&c, "table.workers").await;
    for n in mesh.nodes.iter().flatten() {
        assert!(workers.contains(&n.name), "{workers}");
    }

    // The console, open, with a mark that a reload would lose.
    c.goto(&format!("{web}/console")).await.unwrap();
    let cell = format!("tr[data-sha=\"{green}\"] td.cell");
    assert_eq!(
        c.find(fantoccini::Locator::Css(&cell))
            .await
            .unwrap()
            .attr("data-result")
            .await
            .unwrap()
            .as_deref(),
        Some(built.result.as_str())
    );
    wait_for("the page to follow /events", LONG, || async {
        c.execute("return document.getElementById('live').className", vec![])
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .is_some_and(|class| class.contains("on"))
    })
    .await;
    c.execute("window.buildmeshMark = 42;", vec![])
        .await
        .unwrap();

    let red = repo.commit("main", &[("ci.sh", CI), ("mode", "fail")], "break it");
    mesh.announce(0, &repo.url(), "main", &red).await;
    let red_cell = format!("tr[data-sha=\"{red}\"] td.cell[data-result=\"failure\"]");
    wait_for("the red cell on the open console", LONG, || async {
        c.find(fantoccini::Locator::Css(&red_cell)).await.is_ok()
    })
    .await;
    let mark = c
        .execute("return window.buildmeshMark || null;", vec![])
        .await
        .unwrap();
    assert_eq!(mark, serde_json::json!(42), "the page was reloaded");
    shot(&c, "console-red").await;

    // The dashboard, open, turns red as well.
    c.goto(&format!("{web}/")).await.unwrap();
    wait_for("the failing builder on the dashboard", LONG, || async {
        c.find(fantoccini::Locator::Css(&format!(
            "tr[data-builder=\"{BUILDER}\"]"
        )))
        .await
        .is_ok()
    })
    .await;
    let summary = text_of(&c, "#summary").await;
    assert!(
        summary.contains("1 of 1 stable builders failing"),
        "{summary}"
    );
    shot(&c, "dashboard-red").await;

    // Follow the red cell to its build and its log: the log's markup is text.
    c.goto(&format!("{web}/console")).await.unwrap();
    c.find(fantoccini::Locator::Css(&format!("{red_cell} a")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for("the build page", LONG, || async {
        c.find(fantoccini::Locator::Css("pre.log")).await.is_ok()
    })
    .await;
    let log = text_of(&c, "pre.log").await;
    assert!(log.contains("<script>window.pwned = 1</script>"), "{log}");
    assert!(log.contains("FAIL: test_web"), "{log}");
    let pwned = c
        .execute("return window.pwned || null;", vec![])
        .await
        .unwrap();
    assert_eq!(pwned, serde_json::Value::Null, "a log line ran as script");
    shot(&c, "build-red").await;
    c.close().await.unwrap();
    mesh.shutdown().await;
}
