//! The web console on a real three-node mesh building a real git repository, over HTTP: every
//! page, the escaping of what builds print, badges, the event stream and its replay, the `web`
//! address that serves the pages and nothing else. (The same pages in a real browser are the
//! `browser` test binary, run alone: a browser beside the other end-to-end tests loads the
//! machine enough to change their timing.)

use crate::console_fixture::{BUILDER, CI, LONG, mesh_with_console};

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("the node answers");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
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
    // A branch with a slash is one percent-encoded segment in either form.
    let (status, svg) = get(&format!("{web}/badge/{safe}/release%2F1.0.svg")).await;
    assert_eq!(status, 200);
    assert!(
        svg.contains("release/1.0") && svg.contains("unknown"),
        "{svg}"
    );
    let (status, svg) = get(&format!("{web}/badge/release%2F1.0.svg")).await;
    assert_eq!(status, 200);
    assert!(svg.contains("release/1.0"), "{svg}");
    // An unknown builder is a 404 that still draws, so a README shows what is wrong.
    let (status, svg) = get(&format!("{web}/badge/nobody/main.svg")).await;
    assert_eq!(status, 404);
    assert!(svg.contains("no such builder"), "{svg}");
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
