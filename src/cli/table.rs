//! Plain-text tables for operator commands: left-aligned columns sized to their widest
//! cell, cells cut at a maximum width with `…`.

/// Widest a cell may be before it is cut.
const MAX_CELL: usize = 48;

fn cut(cell: &str) -> String {
    if cell.chars().count() <= MAX_CELL {
        return cell.to_string();
    }
    let mut out: String = cell.chars().take(MAX_CELL - 1).collect();
    out.push('…');
    out
}

/// Renders `rows` under `header`.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| cut(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            out.push_str(cell);
            let pad = width.saturating_sub(cell.chars().count());
            out.extend(std::iter::repeat_n(' ', pad + 2));
        }
        out.trim_end().to_string()
    };
    let mut out = line(&mut header.iter().copied());
    out.push('\n');
    for row in &rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Columns line up on the widest cell and long cells are cut.
    #[test]
    fn aligned_and_cut() {
        let long = "x".repeat(60);
        let out = render(
            &["ID", "STATUS"],
            &[
                vec!["a".into(), "completed".into()],
                vec![long, "failed".into()],
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0].find("STATUS"), lines[1].find("completed"));
        assert!(lines[2].contains('…'));
        assert_eq!(lines[2].chars().take_while(|c| *c == 'x').count(), 47);
    }
}
