//! The report's charts, drawn with `plotters` into SVG strings (text stays
//! SVG `<text>`, so no font library is needed; the browser lays it out).

use leyline::v1::SeedStage;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::ReportError;

/// Chart size in pixels.
const SIZE: (u32, u32) = (860, 400);

/// Distinct colours for arms (a colour-blind-safe palette, Okabe–Ito).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(120, 120, 120),
    RGBColor(0, 0, 0),
];

/// The colour of series `i`.
pub(super) fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// One line with a band, over epochs.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Series {
    /// Legend name.
    pub name: String,
    /// (epoch, value, band low, band high).
    pub points: Vec<(u32, f64, f64, f64)>,
}

/// One dot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Dot {
    /// Which series (colour and legend) it belongs to.
    pub series: usize,
    /// x.
    pub x: f64,
    /// y.
    pub y: f64,
}

/// One row of the seed timeline.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TimelineRow {
    /// Row label.
    pub label: String,
    /// (epoch, stage `SEED_STAGE_*`, α) at each epoch's end.
    pub cells: Vec<(u32, String, f64)>,
}

fn chart_error(e: impl std::fmt::Display) -> ReportError {
    ReportError::Chart(e.to_string())
}

/// Draws onto a white SVG canvas and returns the SVG text.
fn svg(
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), ReportError>,
) -> Result<String, ReportError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        draw(&root)?;
        root.present().map_err(chart_error)?;
    }
    Ok(out)
}

/// The legend, bottom right, over a translucent white box.
fn draw_legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
) -> Result<(), ReportError> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(chart_error)
}

/// A chart with a title and room for axis labels.
fn titled<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    title: &str,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60);
    builder
}

/// `lo..hi` widened so that a flat or single value still has a visible range.
fn padded(lo: f64, hi: f64, fraction: f64, at_least: f64) -> std::ops::Range<f64> {
    if !lo.is_finite() || !hi.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * fraction).max(at_least);
    (lo - pad)..(hi + pad)
}

fn epoch_range(max_epoch: u32) -> std::ops::Range<f64> {
    0.5..(f64::from(max_epoch.max(1)) + 0.5)
}

/// Lines with min–max bands over epochs (`y_scale` multiplies every value).
pub(super) fn lines(
    title: &str,
    y_desc: &str,
    series: &[Series],
    y_scale: f64,
) -> Result<String, ReportError> {
    let values = series
        .iter()
        .flat_map(|s| s.points.iter().flat_map(|p| [p.2, p.3]))
        .filter(|v| v.is_finite())
        .map(|v| v * y_scale);
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let max_epoch = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .max()
        .unwrap_or(1);
    svg(|root| {
        let mut chart = titled(root, title)
            .build_cartesian_2d(epoch_range(max_epoch), padded(lo, hi, 0.08, 0.5))
            .map_err(chart_error)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(y_desc)
            .x_labels(max_epoch.min(20) as usize + 1)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(chart_error)?;
        for (i, s) in series.iter().enumerate() {
            let c = colour(i);
            let pts: Vec<(f64, f64, f64, f64)> = s
                .points
                .iter()
                .filter(|p| p.1.is_finite())
                .map(|&(e, v, l, h)| (f64::from(e), v * y_scale, l * y_scale, h * y_scale))
                .collect();
            if pts.len() > 1 {
                let mut band: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.3)).collect();
                band.extend(pts.iter().rev().map(|p| (p.0, p.2)));
                chart
                    .draw_series(std::iter::once(Polygon::new(band, c.mix(0.15))))
                    .map_err(chart_error)?;
            }
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|p| (p.0, p.1)),
                    c.stroke_width(2),
                ))
                .map_err(chart_error)?
                .label(s.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 3, c.filled())))
                .map_err(chart_error)?;
        }
        draw_legend(&mut chart)
    })
}

/// A scatter of dots, one legend entry per series name.
pub(super) fn scatter(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    names: &[String],
    dots: &[Dot],
) -> Result<String, ReportError> {
    let range = |f: fn(&Dot) -> f64| {
        dots.iter()
            .map(f)
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    };
    let (x_lo, x_hi) = range(|d| d.x);
    let (y_lo, y_hi) = range(|d| d.y);
    svg(|root| {
        let mut chart = titled(root, title)
            .build_cartesian_2d(
                padded(x_lo.min(0.0), x_hi, 0.05, 1.0),
                padded(y_lo, y_hi, 0.08, 0.5),
            )
            .map_err(chart_error)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(chart_error)?;
        for (i, name) in names.iter().enumerate() {
            let c = colour(i);
            chart
                .draw_series(
                    dots.iter()
                        .filter(|d| d.series == i && d.x.is_finite() && d.y.is_finite())
                        .map(|d| Circle::new((d.x, d.y), 5, c.filled())),
                )
                .map_err(chart_error)?
                .label(name.as_str())
                .legend(move |(x, y)| Circle::new((x + 8, y), 5, c.filled()));
        }
        draw_legend(&mut chart)
    })
}

/// The colour of a lifecycle stage in the timeline.
pub(super) fn stage_colour(stage: SeedStage) -> RGBColor {
    match stage {
        SeedStage::Germinated => RGBColor(190, 190, 190),
        SeedStage::Training => RGBColor(230, 159, 0),
        SeedStage::Blending => RGBColor(86, 180, 233),
        SeedStage::Shadowing | SeedStage::Probationary => RGBColor(0, 114, 178),
        SeedStage::Fossilized => RGBColor(0, 158, 115),
        SeedStage::Culled | SeedStage::Embargoed | SeedStage::Resetting | SeedStage::Terminated => {
            RGBColor(213, 94, 0)
        }
        SeedStage::Dormant | SeedStage::Unknown => RGBColor(235, 235, 235),
    }
}

/// The stages a timeline legend lists, in lifecycle order (each stands for
/// the stages sharing its colour).
pub(super) const TIMELINE_STAGES: [SeedStage; 6] = [
    SeedStage::Germinated,
    SeedStage::Training,
    SeedStage::Blending,
    SeedStage::Probationary,
    SeedStage::Fossilized,
    SeedStage::Culled,
];

/// Seed timelines: a row per seed, a cell per epoch coloured by its stage at
/// the epoch's end, and α drawn as a line inside the row (bottom 0, top 1).
pub(super) fn timeline(rows: &[TimelineRow]) -> Result<String, ReportError> {
    let max_epoch = rows
        .iter()
        .flat_map(|r| r.cells.iter().map(|c| c.0))
        .max()
        .unwrap_or(1);
    let height = (110 + 38 * rows.len().max(1)) as u32;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (SIZE.0, height)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        let n = rows.len().max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(340)
            .build_cartesian_2d(0.0..f64::from(max_epoch.max(1)), 0.0..n)
            .map_err(chart_error)?;
        chart
            .configure_mesh()
            .x_desc("epoch (each cell: the stage at the epoch's end; line: α)")
            .x_labels(max_epoch.min(20) as usize + 1)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_labels(0)
            .disable_y_mesh()
            .draw()
            .map_err(chart_error)?;
        for (i, row) in rows.iter().enumerate() {
            // Row 0 at the top.
            let base = n - 1.0 - i as f64;
            chart
                .draw_series(row.cells.iter().map(|(epoch, stage, _)| {
                    let e = f64::from(*epoch);
                    Rectangle::new(
                        [(e - 1.0, base + 0.15), (e, base + 0.85)],
                        stage_colour(SeedStage::from_str_name(stage).unwrap_or(SeedStage::Unknown))
                            .filled(),
                    )
                }))
                .map_err(chart_error)?;
            chart
                .draw_series(LineSeries::new(
                    row.cells.iter().map(|(epoch, _, alpha)| {
                        (f64::from(*epoch) - 0.5, base + 0.15 + 0.7 * alpha)
                    }),
                    BLACK.stroke_width(2),
                ))
                .map_err(chart_error)?;
        }
        // Row labels in the label area, at each row's centre.
        let (_, y_pixels) = chart.plotting_area().get_pixel_range();
        let row_px = f64::from(y_pixels.end - y_pixels.start) / n;
        for (i, row) in rows.iter().enumerate() {
            let y = y_pixels.start + (row_px * (i as f64 + 0.5)) as i32 - 6;
            root.draw(&Text::new(
                row.label.clone(),
                (14, y),
                ("sans-serif", 12).into_font(),
            ))
            .map_err(chart_error)?;
        }
        root.present().map_err(chart_error)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn charts_are_svg_with_their_labels() {
        let series = vec![Series {
            name: "heuristic".into(),
            points: vec![(1, 0.5, 0.4, 0.6), (2, 0.7, 0.6, 0.8)],
        }];
        let svg = lines("accuracy", "%", &series, 100.0).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("heuristic") && svg.contains("epoch"));
        let dots = [Dot {
            series: 0,
            x: 10.0,
            y: 90.0,
        }];
        let svg = scatter("a", "x", "y", &["arm".into()], &dots).unwrap();
        assert!(svg.contains("<circle"));
        let svg = timeline(&[TimelineRow {
            label: "s1 at r0".into(),
            cells: vec![(1, "SEED_STAGE_TRAINING".into(), 0.0)],
        }])
        .unwrap();
        assert!(svg.contains("s1 at r0") && svg.contains("<rect"));
        // No data at all still draws an (empty) chart, not an error.
        assert!(lines("empty", "%", &[], 1.0).unwrap().starts_with("<svg"));
        assert!(timeline(&[]).unwrap().starts_with("<svg"));
    }
}
