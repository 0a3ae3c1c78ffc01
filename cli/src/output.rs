//! Printing objects for people (aligned tables, Docker's style) and for
//! programs (`-o json`, `-o yaml`).

use serde::Serialize;

/// `-o table|json|yaml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns.
    Table,
    /// A JSON array (or object for single results).
    Json,
    /// YAML.
    Yaml,
}

/// Prints `value` as JSON or YAML (tables are printed by the caller).
pub fn print_structured<T: Serialize>(value: &T, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json | OutputFormat::Table => println!("{}", serde_json::to_string_pretty(value)?),
        OutputFormat::Yaml => print!("{}", shoal_crd::yaml::to_string(value)?),
    }
    Ok(())
}

/// A table with a header row, printed with columns padded to their widest cell.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&'static str]) -> Self {
        Self { header: header.to_vec(), rows: Vec::new() }
    }

    /// Adds a row (one cell per column).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders the table as text.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(self.rows.iter()) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{:<width$}   ", cell, width = widths[i]));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints the table to stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// "3 minutes ago" style age of a timestamp.
pub fn age(since: Option<chrono::DateTime<chrono::Utc>>) -> String {
    let Some(since) = since else { return "-".into() };
    let secs = (chrono::Utc::now() - since).num_seconds().max(0);
    let (n, unit) = match secs {
        0..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86399 => (secs / 3600, "hour"),
        _ => (secs / 86400, "day"),
    };
    if n == 1 {
        format!("1 {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns_to_the_widest_cell() {
        let mut t = Table::new(&["NAME", "REPLICAS"]);
        t.row(vec!["web_frontend".into(), "0/3".into()]);
        t.row(vec!["db".into(), "1/1".into()]);
        assert_eq!(t.render(), "NAME           REPLICAS\nweb_frontend   0/3\ndb             1/1\n");
    }

    #[test]
    fn age_reads_like_docker() {
        let now = chrono::Utc::now();
        assert_eq!(age(Some(now - chrono::Duration::seconds(90))), "1 minute ago");
        assert_eq!(age(Some(now - chrono::Duration::hours(5))), "5 hours ago");
        assert_eq!(age(None), "-");
    }
}
