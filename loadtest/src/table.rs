//! The one table writer of the tool: markdown for BENCHMARKS.md (`chatmq-bench-report`) and
//! aligned text for the terminal (`Report::to_table`).

/// How a column's cells line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

#[derive(Clone, Debug, Default)]
pub struct Table {
    cols: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: AsRef<str>>(cols: &[(S, Align)]) -> Table {
        Table {
            cols: cols
                .iter()
                .map(|(h, a)| (h.as_ref().to_owned(), *a))
                .collect(),
            rows: Vec::new(),
        }
    }

    /// A table whose first column is left-aligned and every other right-aligned.
    pub fn numeric(first: &str, rest: &[&str]) -> Table {
        let mut cols = vec![(first, Align::Left)];
        cols.extend(rest.iter().map(|h| (*h, Align::Right)));
        Table::new(&cols)
    }

    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// `| a | b |` lines under a `|---|---:|` alignment line.
    pub fn markdown(&self) -> String {
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let cells: Vec<&str> = cells.collect();
            format!("| {} |\n", cells.join(" | "))
        };
        let mut out = line(&mut self.cols.iter().map(|(h, _)| h.as_str()));
        let marks: Vec<&str> = self
            .cols
            .iter()
            .map(|(_, a)| match a {
                Align::Left => "---",
                Align::Right => "---:",
            })
            .collect();
        out.push_str(&format!("|{}|\n", marks.join("|")));
        for r in &self.rows {
            out.push_str(&line(&mut r.iter().map(String::as_str)));
        }
        out
    }

    /// Columns padded to their widest cell (at least `min[i]`), each line indented by
    /// `indent` spaces.
    pub fn text(&self, indent: usize, min: &[usize]) -> String {
        let n = self.cols.len();
        let mut widths: Vec<usize> = (0..n)
            .map(|i| {
                min.get(i)
                    .copied()
                    .unwrap_or(0)
                    .max(self.cols[i].0.chars().count())
            })
            .collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .zip(&self.cols)
                .map(|((c, w), (_, a))| match a {
                    Align::Left => format!("{c:<w$}"),
                    Align::Right => format!("{c:>w$}"),
                })
                .collect();
            format!("{:indent$}{}\n", "", padded.join(" ").trim_end())
        };
        let mut out = line(self.cols.iter().map(|(h, _)| h.as_str()).collect());
        for r in &self.rows {
            out.push_str(&line(r.iter().map(String::as_str).collect()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_has_alignment_marks() {
        let mut t = Table::numeric("run", &["rate /s"]);
        t.row(["a", "10"]);
        assert_eq!(t.markdown(), "| run | rate /s |\n|---|---:|\n| a | 10 |\n");
    }

    #[test]
    fn text_pads_columns() {
        let mut t = Table::numeric("latency", &["p50"]);
        t.row(["ack", "1.5"]);
        t.row(["end-to-end", "12.25"]);
        assert_eq!(
            t.text(2, &[12, 6]),
            "  latency         p50\n  ack             1.5\n  end-to-end    12.25\n"
        );
    }
}
