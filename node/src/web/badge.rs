//! Badges for READMEs: `/badge/{builder}/{branch}.svg` (one builder's latest verdict on a
//! branch) and `/badge/{branch}.svg` (every stable builder of the branch).

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use buildmesh_protocol::record::BuildState;

use super::{config, pages, problem, read, verdict};
use crate::api::ApiState;

// What a badge says: a verdict word and its colour.
fn badge_of(results: &[BuildState]) -> (&'static str, &'static str) {
    if results.is_empty() {
        return ("unknown", "#9f9f9f");
    }
    if results.contains(&BuildState::Failure) {
        ("failing", "#e05d44")
    } else if results
        .iter()
        .any(|r| matches!(r, BuildState::Exception | BuildState::HostFault))
    {
        ("exception", "#a259c4")
    } else if results
        .iter()
        .any(|r| matches!(r, BuildState::Warnings | BuildState::Flaky))
    {
        ("warnings", "#fe7d37")
    } else if results.iter().all(|r| *r == BuildState::Success) {
        ("passing", "#4c1")
    } else {
        ("building", "#9f9f9f")
    }
}

fn svg(label: &str, (message, fill): (&str, &str)) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        pages::badge(label, message, fill).into_string(),
    )
        .into_response()
}

// The answer to a badge path that does not end in `.svg`.
fn not_a_badge() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "Not found",
        "a badge ends in .svg".into(),
    )
}

pub(super) async fn builder_badge(
    State(s): State<ApiState>,
    Path((builder, branch)): Path<(String, String)>,
) -> Response {
    let Some(branch) = branch.strip_suffix(".svg").map(str::to_string) else {
        return not_a_badge();
    };
    let Some(name) = config(&s)
        .await
        .and_then(|c| c.find(&builder).map(|b| b.name.clone()))
    else {
        // Still an image, so that a README shows what is wrong; the status tells scripts.
        let mut r = svg(&builder, ("no such builder", "#9f9f9f"));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    };
    let (n, br) = (name.clone(), branch.clone());
    let row = match read(&s, move |v| {
        Ok(v.status()?
            .into_iter()
            .find(|r| r.builder == n && r.branch == br))
    })
    .await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    let results: Vec<BuildState> = row
        .map(|r| r.result)
        .filter(|r| verdict(*r))
        .into_iter()
        .collect();
    svg(&format!("{name} {branch}"), badge_of(&results))
}

pub(super) async fn branch_badge(
    State(s): State<ApiState>,
    Path(branch): Path<String>,
) -> Response {
    let Some(branch) = branch.strip_suffix(".svg").map(str::to_string) else {
        return not_a_badge();
    };
    let stable: std::collections::BTreeSet<String> = config(&s)
        .await
        .iter()
        .flat_map(|c| c.builders.iter())
        .filter(|b| b.is_stable())
        .map(|b| b.name.clone())
        .collect();
    let br = branch.clone();
    let results = match read(&s, move |v| {
        Ok(v.status()?
            .into_iter()
            .filter(|r| r.branch == br && stable.contains(&r.builder) && verdict(r.result))
            .map(|r| r.result)
            .collect::<Vec<_>>())
    })
    .await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    svg(&branch, badge_of(&results))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_badge_fails_on_any_red_and_passes_only_when_all_are_green() {
        use BuildState::*;
        assert_eq!(badge_of(&[]).0, "unknown");
        assert_eq!(badge_of(&[Success, Success]).0, "passing");
        assert_eq!(badge_of(&[Success, Warnings]).0, "warnings");
        assert_eq!(badge_of(&[Warnings, Failure, Exception]).0, "failing");
        let svg = pages::badge("3.x <b>", "passing", "#4c1").into_string();
        assert!(svg.contains("3.x &lt;b&gt;"), "{svg}");
    }
}
