//! The read model's trees: each build's current view, the indexes that list builds newest
//! announcement first (all of them, by builder, by builder and branch, by commit), and one
//! status row per (builder, branch).
//!
//! The values are opaque bytes here: the node encodes its views and keeps them up to date as
//! records arrive. This module owns the keys, so that a query reads what it shows and nothing
//! else, however long the history: a builder's newest builds are one prefix scan away, and
//! the status is one row per (builder, branch).
//!
//! Unlike the logs and their indexes, these trees are derived: the node can rebuild them from
//! the records at any time ([`Store::views_clear`]).

use buildmesh_protocol::Hash;

use crate::keys::Key;
use crate::{Store, StoreError, corrupt};

/// Where the views' layout is named (`meta`).
const VIEWS_LAYOUT: &str = "views_version";

/// Where a build is listed: fixed for the life of its job.
#[derive(Clone, Copy, Debug)]
pub struct Listed<'a> {
    /// The job id.
    pub job: &'a Hash,
    /// Newest first by this (the commit's first announcement, in milliseconds).
    pub order: u64,
    /// Builder.
    pub builder: &'a str,
    /// Branch.
    pub branch: &'a str,
    /// Commit (hex).
    pub sha: &'a str,
    /// What kind of build (the node's tag: an ordinary build, a confirmation …), kept in the
    /// listings so that a query for one kind reads no other.
    pub kind: u8,
    /// A few bytes of the build (the node's: what a grid of builds shows), kept in its
    /// builder's listings so that a grid reads them without the views
    /// ([`Store::summaries_newest`]).
    pub summary: &'a [u8],
}

/// Which builds to list, newest first.
#[derive(Clone, Copy, Debug)]
pub enum Listing<'a> {
    /// Every build.
    All,
    /// One builder's, every branch.
    Builder(&'a str),
    /// One builder's on one branch.
    Branch(&'a str, &'a str),
    /// The builds of commits whose sha starts with these hex digits.
    Commit(&'a str),
}

impl Store {
    /// Stores a build's view and lists it; returns whether the view changed.
    pub fn view_put(&self, at: Listed<'_>, view: &[u8]) -> Result<bool, StoreError> {
        if self.views.get(at.job.0)?.as_deref() == Some(view) {
            return Ok(false);
        }
        // The listings first: a listing whose view is not written yet is skipped by readers,
        // and written again with the view.
        let tail = Key::new().u64(at.order).hash(at.job).build();
        let kind = [at.kind];
        let summary = [&kind[..], at.summary].concat();
        self.views_by_order.insert(&tail, &kind)?;
        self.views_by_builder
            .insert(Key::new().str(at.builder).bytes(&tail).build(), &*summary)?;
        self.views_by_branch.insert(
            Key::new()
                .str(at.builder)
                .str(at.branch)
                .bytes(&tail)
                .build(),
            &*summary,
        )?;
        self.views_by_commit.insert(
            Key::new().bytes(at.sha.as_bytes()).hash(at.job).build(),
            &kind,
        )?;
        self.views.insert(at.job.0, view)?;
        Ok(true)
    }

    /// A build's view.
    pub fn view(&self, job: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.views.get(job.0)?.map(|v| v.to_vec()))
    }

    /// The views of the jobs whose id starts with `prefix` (at most `max`).
    pub fn views_with_prefix(
        &self,
        prefix: &[u8],
        max: usize,
    ) -> Result<Vec<(Hash, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.views.scan_prefix(prefix).take(max) {
            let (k, v) = item?;
            out.push((job_of("views", &k, 0)?, v.to_vec()));
        }
        Ok(out)
    }

    /// The views listed, newest announcement first (for one announcement, by job id), of the
    /// kind asked for (any, when `None`), as far as the caller reads; a commit's builds come
    /// by sha instead (a handful: the caller sorts them).
    pub fn views_newest<'a>(
        &'a self,
        listing: Listing<'_>,
        kind: Option<u8>,
    ) -> impl Iterator<Item = Result<(Hash, Vec<u8>), StoreError>> + 'a {
        let (tree, name, prefix) = match listing {
            Listing::All => (&self.views_by_order, "views_by_order", Vec::new()),
            Listing::Builder(b) => (
                &self.views_by_builder,
                "views_by_builder",
                Key::new().str(b).build(),
            ),
            Listing::Branch(b, br) => (
                &self.views_by_branch,
                "views_by_branch",
                Key::new().str(b).str(br).build(),
            ),
            Listing::Commit(sha) => (
                &self.views_by_commit,
                "views_by_commit",
                sha.as_bytes().to_vec(),
            ),
        };
        tree.scan_prefix(prefix).rev().filter_map(move |item| {
            if let (Ok((_, v)), Some(want)) = (&item, kind)
                && v.first() != Some(&want)
            {
                return None;
            }
            let job = item
                .map_err(StoreError::from)
                .and_then(|(k, _)| job_of(name, &k, k.len().saturating_sub(32)));
            let job = match job {
                Ok(j) => j,
                Err(e) => return Some(Err(e)),
            };
            match self.views.get(job.0) {
                Ok(Some(v)) => Some(Ok((job, v.to_vec()))),
                // Listed, but its view is not written yet.
                Ok(None) => None,
                Err(e) => Some(Err(e.into())),
            }
        })
    }

    /// The summaries of a builder's builds (on one branch, or on all), newest announcement
    /// first, of `kind`: (job, order, summary), as far as the caller reads. One prefix scan of
    /// one listing: no view is read.
    pub fn summaries_newest<'a>(
        &'a self,
        builder: &str,
        branch: Option<&str>,
        kind: u8,
    ) -> impl Iterator<Item = Result<(Hash, u64, Vec<u8>), StoreError>> + 'a {
        let (tree, name, prefix) = match branch {
            Some(br) => (
                &self.views_by_branch,
                "views_by_branch",
                Key::new().str(builder).str(br).build(),
            ),
            None => (
                &self.views_by_builder,
                "views_by_builder",
                Key::new().str(builder).build(),
            ),
        };
        tree.scan_prefix(prefix).rev().filter_map(move |item| {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e.into())),
            };
            if v.first() != Some(&kind) {
                return None;
            }
            let at = k.len().saturating_sub(40);
            let order = k
                .get(at..at + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes);
            Some(match (job_of(name, &k, at + 8), order) {
                (Ok(job), Some(order)) => Ok((job, order, v[1..].to_vec())),
                (Err(e), _) => Err(e),
                (_, None) => Err(corrupt(name, &k, "no order")),
            })
        })
    }

    /// Sets the status row of (builder, branch); returns whether it changed.
    pub fn status_put(&self, builder: &str, branch: &str, row: &[u8]) -> Result<bool, StoreError> {
        let key = Key::new().str(builder).str(branch).build();
        if self.status.get(&key)?.as_deref() == Some(row) {
            return Ok(false);
        }
        self.status.insert(key, row)?;
        Ok(true)
    }

    /// Every status row, by builder then branch.
    pub fn status_rows(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::with_capacity(self.status.len());
        for item in self.status.iter() {
            let (_, v) = item?;
            out.push(v.to_vec());
        }
        Ok(out)
    }

    /// Builds with a view (walks every one: for tests and tools, not for a hot path).
    pub fn view_count(&self) -> usize {
        self.views.len()
    }

    /// The layout the views were written in (the node's name for it), if any: none after
    /// [`Store::views_clear`].
    pub fn views_layout(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.meta_get(VIEWS_LAYOUT)
    }

    /// Says the views are written in `layout` from now on.
    pub fn set_views_layout(&self, layout: &[u8]) -> Result<(), StoreError> {
        self.meta_put(VIEWS_LAYOUT, layout)
    }

    /// Forgets every view, listing and status row (to rebuild them from the records), and
    /// their layout, and flushes. A node that finds no layout writes every view again from
    /// every record.
    pub fn views_clear(&self) -> Result<(), StoreError> {
        self.meta_remove(VIEWS_LAYOUT)?;
        for t in [
            &self.views,
            &self.views_by_order,
            &self.views_by_builder,
            &self.views_by_branch,
            &self.views_by_commit,
            &self.status,
        ] {
            t.clear()?;
        }
        self.flush()
    }
}

fn job_of(tree: &'static str, key: &[u8], at: usize) -> Result<Hash, StoreError> {
    key.get(at..at + 32)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(Hash)
        .ok_or_else(|| corrupt(tree, key, "no job id"))
}
