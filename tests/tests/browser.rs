//! The web console in a real headless Chromium (Debian's `chromium` and `chromium-driver`):
//! every page of a three-node mesh, a builder turning red on the open console and dashboard
//! without a reload, a cell followed to its log. A binary of its own, so that the browser does
//! not run beside the other end-to-end tests (it loads a two-core machine enough to change
//! their timing).

#[path = "common/console.rs"]
mod console_fixture;

use std::time::Duration;

use buildmesh_tests::wait_for;
use console_fixture::{BUILDER, CI, LONG, mesh_with_console};

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

// Waits until the open page follows /events (its live dot is on).
async fn following_events(c: &fantoccini::Client) {
    wait_for("the page to follow /events", LONG, || async {
        c.execute("return document.getElementById('live').className", vec![])
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .is_some_and(|class| class.contains("on"))
    })
    .await;
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
    // The workers page names every node the API lists.
    c.goto(&format!("{web}/workers")).await.unwrap();
    let workers = text_of(&c, "table.workers").await;
    let listed: Vec<serde_json::Value> = reqwest::get(format!("{web}/api/v1/nodes"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
    for n in &listed {
        let name = n["name"].as_str().unwrap();
        assert!(workers.contains(name), "{name} not in {workers}");
    }
    // The builder page by its name as written, percent-encoded, and its badge.
    let encoded = "AMD64%20Debian%20root%203.x";
    c.goto(&format!("{web}/builders/{encoded}")).await.unwrap();
    assert_eq!(text_of(&c, "main h1").await, BUILDER);
    assert!(
        c.source().await.unwrap().contains(&built.id),
        "the builder page lists {}",
        built.id
    );
    shot(&c, "builder").await;
    c.goto(&format!("{web}/badge/{encoded}/main.svg"))
        .await
        .unwrap();
    let badge = c.source().await.unwrap();
    assert!(badge.contains("passing"), "{badge}");

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
    following_events(&c).await;
    // When the red cell appears, by the page's clock (the same machine's as the worker's).
    let watch = "window.buildmeshMark = 42; window.redSeen = null;\
        new MutationObserver(function () { if (!window.redSeen && \
        document.querySelector('td.cell[data-result=\"failure\"]')) window.redSeen = Date.now(); })\
        .observe(document.body, { childList: true, subtree: true });";
    c.execute(watch, vec![]).await.unwrap();
    let console_tab = c.window().await.unwrap();

    // The dashboard, open in a second tab, all green.
    let dashboard_tab = c.new_window(true).await.unwrap();
    c.switch_to_window(dashboard_tab.handle.clone())
        .await
        .unwrap();
    c.goto(&format!("{web}/")).await.unwrap();
    let summary = text_of(&c, "#summary").await;
    assert!(summary.contains("all 1 stable builders green"), "{summary}");
    let badge_src = || async {
        c.find(fantoccini::Locator::Css("img.badge"))
            .await
            .unwrap()
            .attr("src")
            .await
            .unwrap()
            .unwrap_or_default()
    };
    let green_badge = badge_src().await;
    following_events(&c).await;
    c.execute("window.buildmeshMark = 43;", vec![])
        .await
        .unwrap();

    let red = repo.commit("main", &[("ci.sh", CI), ("mode", "fail")], "break it");
    mesh.announce(0, &repo.url(), "main", &red).await;
    let failed = mesh
        .wait_build(1, BUILDER, &red, LONG, |r| r == "failure")
        .await;

    // The dashboard turns red without a reload.
    wait_for(
        "the failing builder on the open dashboard",
        LONG,
        || async {
            c.find(fantoccini::Locator::Css(&format!(
                "tr[data-builder=\"{BUILDER}\"]"
            )))
            .await
            .is_ok()
        },
    )
    .await;
    let summary = text_of(&c, "#summary").await;
    assert!(
        summary.contains("1 of 1 stable builders failing"),
        "{summary}"
    );
    let mark = c
        .execute("return window.buildmeshMark || null;", vec![])
        .await
        .unwrap();
    assert_eq!(mark, serde_json::json!(43), "the dashboard was reloaded");
    // The branch's badge is fetched again, not the cached green one.
    assert_ne!(badge_src().await, green_badge);
    shot(&c, "dashboard-red").await;

    // So does the console, in the first tab.
    c.switch_to_window(console_tab).await.unwrap();
    let red_cell = format!("tr[data-sha=\"{red}\"] td.cell[data-result=\"failure\"]");
    wait_for("the red cell on the open console", LONG, || async {
        c.find(fantoccini::Locator::Css(&red_cell)).await.is_ok()
    })
    .await;
    let mark = c
        .execute("return window.buildmeshMark || null;", vec![])
        .await
        .unwrap();
    assert_eq!(mark, serde_json::json!(42), "the console was reloaded");
    let seen = c
        .execute("return window.redSeen;", vec![])
        .await
        .unwrap()
        .as_u64();
    if let (Some(seen), Some(finished)) = (seen, failed.finished.map(|t| t.0)) {
        eprintln!(
            "the red cell appeared on the open console {} ms after its build ended on the worker",
            seen as i64 - finished as i64
        );
    }
    shot(&c, "console-red").await;

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
