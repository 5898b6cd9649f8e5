//! The pages' markup (maud: every value spliced in is escaped). One function per page, plus the
//! layout they share and the badge; the data they show is gathered in [`super`]. One job, the
//! console's HTML, kept in one file so that the layout and the pieces every page uses (state
//! chips, times, links, the log's lines) sit beside the pages; hence its length.

use std::collections::{BTreeMap, BTreeSet};

use buildmesh_protocol::builders::Builder;
use buildmesh_protocol::record::{BuildState, Purpose, ResultCode};
use buildmesh_protocol::{NodeId, Timestamp};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::{BranchHealth, ConsoleRow, Mail, Served, StepLog, classes, colour, seg};
use crate::notifier::NotifierView;
use crate::readmodel::BuildView;
use crate::replica::NodeView;

/// How a page follows changes: not at all (a finished build), on events, or on events and a
/// timer (liveness changes without a record).
#[derive(Clone, Copy)]
enum Live {
    No,
    Events,
    EventsAndEvery(u32),
}

fn layout(served: &Served, title: &str, live: Live, body: Markup) -> Markup {
    let (live, every) = match live {
        Live::No => ("0", 0),
        Live::Events => ("1", 0),
        Live::EventsAndEvery(ms) => ("1", ms),
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — buildmesh" }
                link rel="stylesheet" href="/static/style.css";
            }
            body data-live=(live) data-every=(every) {
                header {
                    a.brand href="/" { "buildmesh" }
                    nav {
                        a href="/" { "Dashboard" }
                        a href="/console" { "Console" }
                        a href="/workers" { "Workers" }
                        a href="/notifier" { "Notifier" }
                    }
                    span.node title="the node serving this page" { "node " (served.node) }
                    span #live.live title="updates live while this page is open" {}
                }
                main { (body) }
                script src="/static/app.js" {}
            }
        }
    }
}

/// An error page.
pub(super) fn problem(title: &str, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (title) " — buildmesh" } link rel="stylesheet" href="/static/style.css"; }
            body { header { a.brand href="/" { "buildmesh" } } main { h1 { (title) } p { (message) } } }
        }
    }
}

fn ago(t: Timestamp) -> String {
    let d = Timestamp::now().since(t).as_secs();
    match d {
        0..60 => format!("{d} s ago"),
        60..3600 => format!("{} min ago", d / 60),
        3600..86_400 => format!("{} h ago", d / 3600),
        _ => format!("{} days ago", d / 86_400),
    }
}

fn at(t: Timestamp) -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::from(t)).to_string()
}

fn when(t: Option<Timestamp>) -> Markup {
    match t {
        Some(t) => html! { time datetime=(at(t)) title=(at(t)) { (ago(t)) } },
        None => html! {},
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(10)]
}

fn builder_link(name: &str) -> Markup {
    html! { a href={ "/builders/" (seg(name)) } { (name) } }
}

fn state(r: BuildState) -> Markup {
    html! { span class={ "state " (classes(r)) } { (r.as_str()) } }
}

fn step_colour(r: ResultCode) -> &'static str {
    match r {
        ResultCode::Success => "green",
        ResultCode::Warnings | ResultCode::Flaky => "orange",
        ResultCode::Failure => "red",
        ResultCode::Exception => "purple",
        ResultCode::Cancelled => "grey",
    }
}

fn duration(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 600_000 {
        format!("{} s", ms / 1000)
    } else {
        format!("{} min", ms / 60_000)
    }
}

// Why a node needs someone's attention, if it does.
fn attention(n: &NodeView) -> Option<String> {
    if n.revoked {
        return None;
    }
    if let Some(h) = &n.health
        && h.state == "quarantined"
    {
        return Some(format!(
            "quarantined{}",
            h.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ));
    }
    if let Some(p) = &n.paused {
        return Some(format!("self-disabled: {p}"));
    }
    if !n.live {
        return Some(match n.last_heard {
            Some(t) => format!("missing since {}", ago(t)),
            None => "never heard from".to_string(),
        });
    }
    None
}

fn is_worker(n: &NodeView) -> bool {
    n.roles.contains(&buildmesh_protocol::docs::Role::Worker)
}

/// `/`: the release dashboard.
pub(super) fn dashboard(served: &Served, branches: &[BranchHealth], nodes: &[NodeView]) -> Markup {
    let troubled: Vec<(&NodeView, String)> = nodes
        .iter()
        .filter(|n| is_worker(n))
        .filter_map(|n| attention(n).map(|a| (n, a)))
        .collect();
    let mut summary: Vec<String> = branches
        .iter()
        .map(|b| {
            if b.failing.is_empty() {
                format!("{}: all {} stable builders green", b.branch, b.stable)
            } else {
                format!(
                    "{}: {} of {} stable builders failing",
                    b.branch,
                    b.failing.len(),
                    b.stable
                )
            }
        })
        .collect();
    if branches.is_empty() {
        summary.push("no stable builder has a result yet".into());
    }
    let workers = nodes.iter().filter(|n| is_worker(n) && !n.revoked).count();
    summary.push(if troubled.is_empty() {
        format!("all {workers} workers fine")
    } else {
        format!("{} of {workers} workers need attention", troubled.len())
    });
    html_page_dashboard(served, branches, &troubled, &summary.join(" · "))
}

fn html_page_dashboard(
    served: &Served,
    branches: &[BranchHealth],
    troubled: &[(&NodeView, String)],
    summary: &str,
) -> Markup {
    let body = html! {
        h1 { "Release status" }
        p #summary.summary { (summary) }
        @for b in branches {
            section.branch data-branch=(b.branch) {
                h2 {
                    (b.branch) " "
                    // The query names the state drawn, so that a page redrawn in place loads the
                    // badge again when it changed instead of showing the browser's cached one.
                    img.badge src={ "/badge/" (seg(&b.branch)) ".svg?state=" (b.drawn()) } alt={ "status of " (b.branch) };
                }
                @if b.failing.is_empty() {
                    p.ok { "All " (b.stable) " stable builders are green or building." }
                } @else {
                    table.failing {
                        thead { tr { th { "Builder" } th { "Tier" } th { "Now" } th { "Failing since" } th { "Began" } th { "First failing step" } th { "Builds" } } }
                        tbody {
                            @for f in &b.failing {
                                @let step = f.now.steps.iter().find(|s| matches!(s.result, ResultCode::Failure | ResultCode::Warnings | ResultCode::Flaky));
                                tr data-builder=(f.builder) {
                                    td { (builder_link(&f.builder)) }
                                    td { (f.tier.as_deref().unwrap_or("")) }
                                    td { a href={ "/builds/" (f.now.id) } { (state(f.now.result)) } }
                                    td { a href={ "/builds/" (f.began.id) } { code { (short(&f.began.sha)) } } }
                                    td { (when(f.began.finished.or(Some(f.began.announced)))) }
                                    td { @if let Some(s) = step { (s.name) } }
                                    td { (f.length) }
                                }
                            }
                        }
                    }
                }
            }
        }
        section.workers {
            h2 { "Workers needing attention" }
            @if troubled.is_empty() {
                p.ok { "None: every worker is live, healthy and claiming." }
            } @else {
                table {
                    thead { tr { th { "Worker" } th { "State" } th { "Owner" } } }
                    tbody {
                        @for (n, why) in troubled {
                            tr { td { (n.name) } td { (why) } td { (served.owner(n.owner.as_deref())) } }
                        }
                    }
                }
            }
        }
    };
    layout(served, "Release status", Live::EventsAndEvery(5_000), body)
}

/// The console's filters.
pub(super) struct Filters<'a> {
    pub branch: Option<&'a str>,
    pub tag: Option<&'a str>,
    pub branches: &'a BTreeSet<String>,
    pub tags: &'a BTreeSet<String>,
}

// The console's columns, grouped twice: by platform (the builder's required labels, such as
// `os=linux arch=aarch64`), then within a platform by tags (builders with the same tags side by
// side). Groups keep the configuration's order of their first builder.
type Columns<'a> = Vec<(String, Vec<(String, Vec<&'a Builder>)>)>;

fn groups<'a>(builders: &[&'a Builder]) -> Columns<'a> {
    let mut out: Columns<'a> = Vec::new();
    for b in builders {
        let platform = if b.requires.is_empty() {
            "any platform".to_string()
        } else {
            b.requires.values().cloned().collect::<Vec<_>>().join(" ")
        };
        let tags = if b.tags.is_empty() {
            "untagged".to_string()
        } else {
            b.tags.iter().cloned().collect::<Vec<_>>().join(", ")
        };
        let by_tags = match out.iter_mut().find(|(p, _)| *p == platform) {
            Some((_, list)) => list,
            None => {
                out.push((platform, Vec::new()));
                &mut out.last_mut().expect("just pushed").1
            }
        };
        match by_tags.iter_mut().find(|(t, _)| *t == tags) {
            Some((_, list)) => list.push(b),
            None => by_tags.push((tags, vec![b])),
        }
    }
    out
}

/// `/console`: commits × builders.
pub(super) fn console(
    served: &Served,
    builders: &[&Builder],
    rows: &[ConsoleRow],
    f: &Filters<'_>,
) -> Markup {
    let groups = groups(builders);
    let columns: Vec<&Builder> = groups
        .iter()
        .flat_map(|(_, by_tags)| by_tags.iter().flat_map(|(_, list)| list.iter().copied()))
        .collect();
    let mut branches: Vec<&String> = f.branches.iter().collect();
    branches.sort_by(|a, b| super::branch_order(a, b));
    let body = html! {
        h1 { "Console" }
        form.filters method="get" action="/console" {
            label { "Branch " select name="branch" {
                option value="" selected[f.branch.is_none()] { "all" }
                @for b in branches { option value=(b) selected[f.branch == Some(b.as_str())] { (b) } }
            } }
            label { " Tag " select name="tag" {
                option value="" selected[f.tag.is_none()] { "all" }
                @for t in f.tags { option value=(t) selected[f.tag == Some(t.as_str())] { (t) } }
            } }
            " " button type="submit" { "Show" }
        }
        @if rows.is_empty() {
            p { "No builds yet." }
        } @else {
            div.grid {
                table.console {
                    thead {
                        tr {
                            th rowspan="3" { "Commit" }
                            @for (platform, by_tags) in &groups {
                                th.group colspan=(by_tags.iter().map(|(_, l)| l.len()).sum::<usize>()) { (platform) }
                            }
                        }
                        tr {
                            @for (_, by_tags) in &groups {
                                @for (tags, list) in by_tags { th.group.tag colspan=(list.len()) { (tags) } }
                            }
                        }
                        tr {
                            @for b in &columns {
                                th.builder { div { a href={ "/builders/" (seg(&b.name)) } title=(b.name) { (b.name) } } }
                            }
                        }
                    }
                    tbody {
                        @for r in rows {
                            tr data-sha=(r.sha) {
                                th.commit {
                                    code { (short(&r.sha)) } " "
                                    span.branch { (r.branch) } " "
                                    (when(Some(r.announced)))
                                    @if let Some(subject) = &r.subject { br; span.subject title=(subject) { (subject) } }
                                }
                                @for b in &columns {
                                    @match r.cells.get(&b.name) {
                                        Some(v) => td class={ "cell " (classes(v.result)) } data-result=(v.result.as_str()) {
                                            a href={ "/builds/" (v.id) } title={ (b.name) ": " (v.result.as_str()) } { (cell_mark(v.result)) }
                                        },
                                        None => td.cell.none {},
                                    }
                                }
                            }
                        }
                    }
                }
            }
            p.legend {
                @for r in [BuildState::Success, BuildState::Warnings, BuildState::Flaky, BuildState::Failure, BuildState::Exception, BuildState::Running, BuildState::Pending, BuildState::Unconfirmed, BuildState::HostFault, BuildState::Skipped] {
                    span class={ "cell " (classes(r)) } { (cell_mark(r)) } " " (r.as_str()) " "
                }
            }
        }
    };
    layout(served, "Console", Live::Events, body)
}

// A cell's mark: colour is not the only way to tell states apart.
fn cell_mark(r: BuildState) -> &'static str {
    match r {
        BuildState::Success => "✓",
        BuildState::Warnings => "!",
        BuildState::Flaky => "~",
        BuildState::Failure => "✗",
        BuildState::Exception => "E",
        BuildState::HostFault => "H",
        BuildState::Running => "…",
        BuildState::Pending => "·",
        BuildState::Unconfirmed => "?",
        BuildState::Skipped => "-",
        BuildState::Cancelled => "C",
    }
}

/// `/builders/{builder}`: its builds per branch, newest first, with the current streak.
pub(super) fn builder(
    served: &Served,
    b: &Builder,
    history: &BTreeMap<String, Vec<BuildView>>,
) -> Markup {
    let mut history: Vec<(&String, &Vec<BuildView>)> = history.iter().collect();
    history.sort_by(|a, b| super::branch_order(a.0, b.0));
    let body = html! {
        h1 { (b.name) }
        p.meta {
            "Repository " code { (b.repo) } " · branches " (b.branches.join(", "))
            @if !b.tags.is_empty() { " · tags " (b.tags.iter().cloned().collect::<Vec<_>>().join(", ")) }
            @for (k, v) in &b.requires { " · " (k) "=" (v) }
        }
        @if history.is_empty() { p { "No builds yet." } }
        @for (branch, builds) in history {
            @let verdicts: Vec<&BuildView> = builds.iter().filter(|v| super::verdict(v.result)).collect();
            @let streak = verdicts.first().map(|first| (first.result, verdicts.iter().take_while(|v| colour(v.result) == colour(first.result)).count()));
            section.branch data-branch=(branch) {
                h2 { (branch) " " img.badge src={ "/badge/" (seg(&b.name)) "/" (seg(branch)) ".svg" } alt={ "status of " (b.name) " on " (branch) }; }
                @if let Some((r, n)) = streak { p.streak { (state(r)) " for the last " (n) " builds with a verdict" } }
                table {
                    thead { tr { th { "Build" } th { "Commit" } th { "Result" } th { "Worker" } th { "Finished" } th { "Took" } } }
                    tbody {
                        @for v in builds {
                            tr {
                                td { a href={ "/builds/" (v.id) } { (v.id) } }
                                td { code { (short(&v.sha)) } }
                                td { (state(v.result)) }
                                td { (served.name(v.worker.as_ref())) }
                                td { (when(v.finished)) }
                                td { @if let (Some(s), Some(f)) = (v.started, v.finished) { (duration(f.since(s).as_millis() as u64)) } }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(served, &b.name, Live::Events, body)
}

// Lines longer than this are cut on the page (the raw log has them whole).
const MAX_LINE: usize = 4_000;

/// The ANSI colour a log line leaves on for the lines after it: terminals keep a colour until
/// it is reset, and the log is converted line by line.
#[derive(Default)]
struct Colours(String);

impl Colours {
    // The longest run of colour codes carried (a log that sets colours forever without a reset
    // carries only its newest ones).
    const MAX: usize = 64;

    /// One line as HTML, in the colours the lines before it left on.
    fn line(&mut self, text: &str) -> Markup {
        static SGR: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
            regex::Regex::new(r"\x1b\[([0-9;]*)m").expect("a valid pattern")
        });
        let out = if self.0.is_empty() {
            log_line(text)
        } else {
            log_line(&format!("{}{text}", self.0))
        };
        for m in SGR.captures_iter(text) {
            let params = m.get(1).map_or("", |p| p.as_str());
            if params.is_empty() || params == "0" {
                self.0.clear();
            } else {
                if self.0.len() + m[0].len() > Self::MAX {
                    self.0.clear();
                }
                self.0.push_str(&m[0]);
            }
        }
        out
    }
}

fn log_line(text: &str) -> Markup {
    let text = if text.len() > MAX_LINE {
        let mut end = MAX_LINE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        &text[..end]
    } else {
        text
    };
    // The converter escapes the text (`<`, `>`, `&`, quotes) before it adds its own spans.
    match ansi_to_html::convert(text) {
        Ok(h) => html! { (PreEscaped(h)) },
        Err(_) => html! { (text) },
    }
}

// A line that reads as a failure in a failed step's log (test runners' and compilers' usual
// words), highlighted beside the lines the result names.
fn failure_line(text: &str) -> bool {
    static PATTERN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"^(FAIL|FAILED|ERROR)\b|^\S*(Error|Exception): |\berror(\[\w+\])?: |^Traceback |^buildmesh: step (exited with code|timed out|was killed)",
        )
        .expect("a valid pattern")
    });
    PATTERN.is_match(text)
}

/// `/builds/{id}`: one build, its steps and their logs.
pub(super) fn build(
    served: &Served,
    b: &BuildView,
    logs: &[StepLog],
    warn: &[(String, Vec<regex::Regex>)],
) -> Markup {
    let finished = super::verdict(b.result)
        || matches!(
            b.result,
            BuildState::Cancelled | BuildState::Skipped | BuildState::HostFault
        );
    let body = html! {
        h1 { "Build " (b.id) " " (state(b.result)) }
        table.facts {
            tr { th { "Builder" } td { (builder_link(&b.builder)) } }
            tr { th { "Branch" } td { (b.branch) } }
            tr { th { "Commit" } td { code { (b.sha) } } }
            tr { th { "Repository" } td { code { (b.repo) } } }
            tr { th { "Worker" } td { (served.name(b.worker.as_ref())) } }
            tr { th { "Announced" } td { (when(Some(b.announced))) } }
            tr { th { "Started" } td { (when(b.started)) } }
            tr { th { "Finished" } td { (when(b.finished)) } }
            @match b.purpose {
                Purpose::Build => {}
                Purpose::Rebuild { by, .. } => {
                    tr { th { "Rebuild" } td { "asked for by " (served.name(Some(&by))) } }
                }
                Purpose::Confirm { job, attempt, worker } => {
                    @let red = format!("{}-{attempt}", &job.to_string()[..16]);
                    tr { th { "Confirms" } td {
                        "the red of " a href={ "/builds/" (red) } { (red) }
                        " on " (served.name(Some(&worker)))
                    } }
                }
                Purpose::Probe { bisection, .. } => {
                    tr { th { "Probe" } td {
                        "of culprit search " code { (&bisection.to_string()[..16]) }
                    } }
                }
                Purpose::Revalidate { worker, n, .. } => {
                    tr { th { "Re-validates" } td {
                        (served.name(Some(&worker))) ", build " (n) " of its quarantine"
                    } }
                }
            }
            @if let Some(c) = &b.confirmation {
                tr { th { "Confirmation" } td {
                    a href={ "/builds/" (c.build) } { (c.build) } " " (state(c.result))
                    " on " (served.name(c.worker.as_ref()))
                    @if c.same_host { " (same host: no other was available)" }
                } }
            }
        }
        @if b.attempts.len() > 1 || b.attempts.iter().any(|a| !a.won) {
            h2 { "Attempts" }
            table {
                thead { tr { th { "Attempt" } th { "Worker" } th { "Result" } th { "Won its claim" } } }
                tbody { @for a in &b.attempts { tr { td { (a.attempt) } td { (served.name(Some(&a.worker))) } td { (a.result) } td { (if a.won { "yes" } else { "no" }) } } } }
            }
        }
        h2 { "Steps" }
        @if b.steps.is_empty() { p { "No result yet." } } @else {
            table.steps {
                thead { tr { th { "Step" } th { "Result" } th { "Exit code" } th { "Took" } th { "Warnings" } th { "Log" } } }
                tbody {
                    @for st in &b.steps {
                        tr {
                            td { (st.name) }
                            td { span class={ "state " (step_colour(st.result)) } { (st.result.to_string()) } }
                            td { @if let Some(c) = st.exit_code { (c) } }
                            td { (duration(st.duration_ms)) }
                            td { (st.warnings) }
                            td {
                                @if st.log.is_some() {
                                    a href={ "#log-" (seg(&st.name)) } { "log" } " · "
                                    a href={ "/builds/" (b.id) "/raw?step=" (seg(&st.name)) } { "raw" }
                                }
                            }
                        }
                    }
                }
            }
        }
        @for log in logs {
            @let st = b.steps.iter().find(|s| s.name == log.step);
            @let failing: BTreeSet<&str> = st.map(|s| s.failing_lines.iter().map(String::as_str).collect()).unwrap_or_default();
            @let failed = st.is_some_and(|s| matches!(s.result, ResultCode::Failure | ResultCode::Flaky | ResultCode::Exception));
            @let patterns = warn.iter().find(|(n, _)| *n == log.step).map(|(_, p)| p.as_slice()).unwrap_or(&[]);
            @let anchor = seg(&log.step);
            section.log id={ "log-" (anchor) } {
                h3 { "Log of " (log.step) }
                @if let Some(why) = &log.missing { p.missing { (why) } } @else {
                    @if log.lines.len() < log.total {
                        p.earlier {
                            "Showing the last " (log.lines.len()) " of " (log.total) " lines. "
                            a href={ "?full=" (seg(&log.step)) "#log-" (anchor) } { "Show all" } " · "
                            a href={ "/builds/" (b.id) "/raw?step=" (seg(&log.step)) } { "raw log" }
                        }
                    }
                    pre.log {
                        @let mut colours = Colours::default();
                        @for (n, text) in &log.lines {
                            @let class = if failing.contains(text.trim_end()) || (failed && failure_line(text)) { "line fail" } else if patterns.iter().any(|p| p.is_match(text)) { "line warn" } else { "line" };
                            span class=(class) id={ (anchor) "-L" (n) } {
                                a.ln href={ "#" (anchor) "-L" (n) } { (n) }
                                (colours.line(text)) "\n"
                            }
                        }
                    }
                }
            }
        }
    };
    let live = if finished { Live::No } else { Live::Events };
    layout(served, &format!("Build {}", b.id), live, body)
}

/// `/workers`: every admitted node.
pub(super) fn workers(served: &Served, nodes: &[NodeView]) -> Markup {
    let body = html! {
        h1 { "Workers" }
        table.workers {
            thead { tr { th { "Name" } th { "State" } th { "Labels" } th { "Roles" } th { "Load" } th { "Health" } th { "Owner" } th { "Id" } } }
            tbody {
                @for n in nodes {
                    @let live = if n.revoked { "revoked".to_string() } else if n.live { "live".to_string() } else { attention(n).unwrap_or_else(|| "missing".into()) };
                    tr class=(if n.revoked { "revoked" } else if n.live { "live" } else { "missing" }) {
                        td { (n.name) }
                        td { (live) @if let Some(p) = &n.paused { br; "self-disabled: " (p) } }
                        td { @for (k, v) in &n.labels { span.label { (k) "=" (v) } " " } }
                        td { (n.roles.iter().map(|r| format!("{r:?}").to_lowercase()).collect::<Vec<_>>().join(", ")) }
                        td { @if n.capacity > 0 || n.running > 0 { (n.running) " / " (n.capacity) } }
                        td {
                            @if let Some(h) = &n.health {
                                (h.state)
                                @if let Some(r) = &h.reason { ": " (r) }
                                @if h.state == "quarantined" { " (" (h.revalidated) " of " (h.revalidations_needed) " re-validations)" }
                            }
                            @if n.misbehaving > 0 { br; "refused records: " (n.misbehaving) }
                        }
                        td { (served.owner(n.owner.as_deref())) }
                        td { code title=(n.id.to_string()) { (n.id.short()) } }
                    }
                }
            }
        }
    };
    layout(served, "Workers", Live::EventsAndEvery(3_000), body)
}

fn node_name(served: &Served, id: &NodeId) -> String {
    served.name(Some(id))
}

/// `/notifier`: who holds the lease, and the mails sent.
pub(super) fn notifier(served: &Served, view: Option<&NotifierView>, mails: &[Mail]) -> Markup {
    let body = html! {
        h1 { "Notifier" }
        @match view {
            Some(v) => table.facts {
                tr { th { "Holder" } td { @match &v.holder { Some(h) => (node_name(served, h)), None => "none known" } } }
                tr { th { "Term" } td { (v.term) } }
                tr { th { "Lease until" } td { @if let Some(t) = v.lease_expires { (at(t)) } } }
                tr { th { "Voters" } td { (v.voters.iter().map(|id| node_name(served, id)).collect::<Vec<_>>().join(", ")) } }
                tr { th { "Mails sent by this node" } td { (v.sent_here) } }
                tr { th { "Waiting" } td { (v.waiting) } }
                tr { th { "Kept from the list (red not reproduced)" } td { (v.suppressed) } }
            },
            None => p { "The notifier does not answer on this node." },
        }
        h2 { "Mails sent" }
        @if mails.is_empty() { p { "None yet." } } @else {
            table {
                thead { tr { th { "When" } th { "Builder" } th { "Branch" } th { "Commit" } th { "By" } th { "Term" } } }
                tbody {
                    @for m in mails {
                        tr {
                            td { (when(Some(m.time))) }
                            td { (builder_link(&m.body.builder)) }
                            td { (m.body.branch) }
                            td { code { (short(&m.body.sha)) } }
                            td { (node_name(served, &m.author)) }
                            td { (m.body.term) }
                        }
                    }
                }
            }
        }
    };
    layout(served, "Notifier", Live::Events, body)
}

/// A badge: `label | message`, the message on `fill`.
pub(super) fn badge(label: &str, message: &str, fill: &str) -> Markup {
    // Verdana 11px averages about 6.5 px a character.
    let w = |s: &str| 10 + (s.chars().count() as u32 * 13).div_ceil(2);
    let (lw, mw) = (w(label), w(message));
    let total = lw + mw;
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(total) height="20" role="img" aria-label={ (label) ": " (message) } {
            title { (label) ": " (message) }
            rect width=(lw) height="20" fill="#555" {}
            rect x=(lw) width=(mw) height="20" fill=(fill) {}
            g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11" {
                text x=(lw / 2) y="14" { (label) }
                text x=(lw + mw / 2) y="14" { (message) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_colour_left_on_carries_to_the_next_lines_until_reset() {
        let mut c = Colours::default();
        let first = c.line("\x1b[31mred starts").into_string();
        let second = c.line("still red").into_string();
        let third = c.line("ends\x1b[0m here").into_string();
        let fourth = c.line("plain <b>").into_string();
        assert!(first.contains("red starts</span>"), "{first}");
        assert!(
            second.contains("<span") && second.contains("still red</span>"),
            "{second}"
        );
        assert!(third.contains("<span"), "{third}");
        assert_eq!(fourth, "plain &lt;b&gt;");
    }
}
