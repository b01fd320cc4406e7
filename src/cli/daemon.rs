//! `workers`, `info`, `du` and `prune`: tables for people, `--format json` for scripts.

use std::io::Write;

use clap::Args;
use serde::Serialize;

use pf_buildkit::buildkit::{CacheRecord, PruneOptions};

use super::units::{format_bytes, parse_bytes, parse_duration};
use super::{Format, GlobalArgs, Outcome};

#[derive(Debug, Args)]
pub struct WorkersArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Show labels and GC policies too
    #[arg(long, short)]
    verbose: bool,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, Args)]
pub struct DuArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Prune everything, including records the garbage collector would keep
    #[arg(long)]
    all: bool,
    /// Keep records used within this duration (e.g. 48h)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    keep_duration: Option<std::time::Duration>,
    /// Keep this much cache (e.g. 10GB)
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    keep_storage: Option<u64>,
    /// Only prune records matching this containerd-style filter (repeatable)
    #[arg(long = "filter", value_name = "FILTER")]
    filters: Vec<String>,
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub async fn workers(global: &GlobalArgs, args: &WorkersArgs) -> anyhow::Result<Outcome> {
    let workers = global.connect().await?.workers().await?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => write_json(&mut out, &workers)?,
        Format::Table => {
            let mut rows = vec![vec!["ID".to_owned(), "PLATFORMS".to_owned()]];
            rows.extend(workers.iter().map(|w| {
                let platforms: Vec<String> = w.platforms.iter().map(ToString::to_string).collect();
                vec![w.id.clone(), platforms.join(",")]
            }));
            write_table(&mut out, &rows)?;
            if args.verbose {
                for w in &workers {
                    writeln!(out, "\n{}:", w.id)?;
                    for (k, v) in &w.labels {
                        writeln!(out, "  label {k}={v}")?;
                    }
                    for p in &w.gc_policies {
                        writeln!(
                            out,
                            "  gc all={} keep-duration={}s reserved={} max-used={} min-free={} filters={}",
                            p.all,
                            p.keep_duration_seconds,
                            format_bytes(p.reserved_space),
                            format_bytes(p.max_used_space),
                            format_bytes(p.min_free_space),
                            p.filters.join(",")
                        )?;
                    }
                }
            }
        }
    }
    Ok(Outcome::Success)
}

pub async fn info(global: &GlobalArgs, args: &InfoArgs) -> anyhow::Result<Outcome> {
    let info = global.connect().await?.info().await?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => write_json(&mut out, &info)?,
        Format::Table => {
            writeln!(
                out,
                "BuildKit: {} {} {}",
                info.package, info.version, info.revision
            )?;
        }
    }
    Ok(Outcome::Success)
}

pub async fn du(global: &GlobalArgs, args: &DuArgs) -> anyhow::Result<Outcome> {
    let records = global.connect().await?.disk_usage().await?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => write_json(&mut out, &records)?,
        Format::Table => write_usage(&mut out, &records, true)?,
    }
    Ok(Outcome::Success)
}

pub async fn prune(global: &GlobalArgs, args: &PruneArgs) -> anyhow::Result<Outcome> {
    let options = PruneOptions::default()
        .with_all(args.all)
        .with_keep_duration(args.keep_duration)
        .with_keep_storage(args.keep_storage)
        .with_filters(args.filters.clone());
    let freed = global.connect().await?.prune(&options).await?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => write_json(&mut out, &freed)?,
        Format::Table => write_usage(&mut out, &freed, false)?,
    }
    Ok(Outcome::Success)
}

/// Totals over cache records, as `du` prints them under the table.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct UsageTotals {
    pub total: i64,
    pub reclaimable: i64,
    pub shared: i64,
}

pub fn totals(records: &[CacheRecord]) -> UsageTotals {
    let mut t = UsageTotals::default();
    for r in records {
        t.total += r.size;
        if !r.in_use {
            t.reclaimable += r.size;
        }
        if r.shared {
            t.shared += r.size;
        }
    }
    t
}

fn write_usage(
    out: &mut impl Write,
    records: &[CacheRecord],
    reclaimable_column: bool,
) -> std::io::Result<()> {
    let mut sorted: Vec<&CacheRecord> = records.iter().collect();
    sorted.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.id.cmp(&b.id)));
    let mut header = vec!["ID".to_owned()];
    if reclaimable_column {
        header.push("RECLAIMABLE".to_owned());
    }
    header.extend(["SIZE".to_owned(), "LAST ACCESSED".to_owned()]);
    let now = pf_now();
    let mut rows = vec![header];
    for r in &sorted {
        let mut id = r.id.clone();
        if r.mutable {
            id.push('*');
        }
        let mut row = vec![id];
        if reclaimable_column {
            row.push((!r.in_use).to_string());
        }
        row.push(format_bytes(r.size));
        row.push(
            r.last_used_at
                .map_or_else(String::new, |t| format_age(now - t)),
        );
        rows.push(row);
    }
    write_table(out, &rows)?;
    let t = totals(records);
    if reclaimable_column {
        writeln!(out, "Shared:\t\t{}", format_bytes(t.shared))?;
        writeln!(out, "Reclaimable:\t{}", format_bytes(t.reclaimable))?;
    }
    writeln!(out, "Total:\t\t{}", format_bytes(t.total))?;
    Ok(())
}

fn pf_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn format_age(seconds: i64) -> String {
    match seconds {
        s if s < 60 => "just now".into(),
        s if s < 3600 => format!("{} minutes ago", s / 60),
        s if s < 86400 => format!("{} hours ago", s / 3600),
        s => format!("{} days ago", s / 86400),
    }
}

/// Writes rows as left-aligned columns separated by three spaces.
pub fn write_table(out: &mut impl Write, rows: &[Vec<String>]) -> std::io::Result<()> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 3));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn write_json(out: &mut impl Write, value: &impl Serialize) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}
