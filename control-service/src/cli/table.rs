//! Plain text tables for the terminal: a header row and aligned columns, numbers to the
//! right, text to the left.

/// Renders `rows` under `headers`, columns two spaces apart. A cell that parses as a
/// number is right-aligned.
#[must_use]
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| {
                if cell.parse::<f64>().is_ok() {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_text_left_and_numbers_right() {
        let rows = vec![
            vec!["envoy-a".to_owned(), "7".to_owned(), "ok".to_owned()],
            vec!["b".to_owned(), "120".to_owned(), "saturated".to_owned()],
        ];
        assert_eq!(
            render(&["INSTANCE", "IN FLIGHT", "HEALTH"], &rows),
            "INSTANCE  IN FLIGHT  HEALTH\n\
             envoy-a           7  ok\n\
             b               120  saturated\n"
        );
    }
}
