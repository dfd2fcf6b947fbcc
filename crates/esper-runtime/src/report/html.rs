//! The report page: one self-contained HTML file (inline CSS, inline SVG,
//! no script, nothing fetched), and the verdict and run tables in it.

use std::fmt::Write as _;

use crate::cohort::verdict::{Outcome, Verdict};

use super::RunData;

/// `text` with the five XML specials escaped (arm names and run ids come
/// from the user's files).
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body { font-family: sans-serif; margin: 2em auto; max-width: 960px; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
p.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; }
td.l, th.l { text-align: left; }
.PASS { background: #c8ecd4; font-weight: bold; }
.FAIL { background: #f6c9c0; font-weight: bold; }
.INCONCLUSIVE { background: #f7e6b0; font-weight: bold; }
figure { margin: 0.8em 0; }
figcaption { color: #555; font-size: 0.85em; }
.legend span { display: inline-block; width: 14px; height: 14px; vertical-align: middle; margin: 0 4px 0 12px; }
.error { background: #fbe3de; padding: 0.6em; border: 1px solid #e3a596; }
";

/// A page section.
#[derive(Debug, Clone, Default)]
pub(super) struct Page {
    title: String,
    subtitle: String,
    body: String,
}

impl Page {
    pub(super) fn new(title: &str, subtitle: &str) -> Self {
        Self {
            title: escape(title),
            subtitle: escape(subtitle),
            body: String::new(),
        }
    }

    pub(super) fn heading(&mut self, text: &str) {
        let _ = writeln!(self.body, "<h2>{}</h2>", escape(text));
    }

    pub(super) fn paragraph(&mut self, text: &str) {
        let _ = writeln!(self.body, "<p>{}</p>", escape(text));
    }

    pub(super) fn error(&mut self, text: &str) {
        let _ = writeln!(self.body, "<p class=\"error\">{}</p>", escape(text));
    }

    /// An inline SVG chart with its caption (`svg` is plotters' output).
    pub(super) fn figure(&mut self, svg: &str, caption: &str) {
        let _ = writeln!(
            self.body,
            "<figure>{svg}<figcaption>{}</figcaption></figure>",
            escape(caption)
        );
    }

    /// Raw HTML built by this module.
    fn raw(&mut self, html: &str) {
        self.body.push_str(html);
    }

    pub(super) fn finish(self) -> String {
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head>\n<body><h1>{t}</h1><p class=\"sub\">{s}</p>\n{b}</body></html>\n",
            t = self.title,
            s = self.subtitle,
            b = self.body
        )
    }
}

fn row(cells: &[String], left: usize) -> String {
    let mut out = String::from("<tr>");
    for (i, c) in cells.iter().enumerate() {
        let class = if i < left { " class=\"l\"" } else { "" };
        let _ = write!(out, "<td{class}>{}</td>", escape(c));
    }
    out.push_str("</tr>\n");
    out
}

fn header(names: &[&str], left: usize) -> String {
    let mut out = String::from("<tr>");
    for (i, n) in names.iter().enumerate() {
        let class = if i < left { " class=\"l\"" } else { "" };
        let _ = write!(out, "<th{class}>{}</th>", escape(n));
    }
    out.push_str("</tr>\n");
    out
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.2}", 100.0 * x)
    } else {
        "-".to_owned()
    }
}

fn millions(x: f64) -> String {
    if x.is_finite() {
        format!("{:.3}", x / 1e6)
    } else {
        "-".to_owned()
    }
}

/// The verdict: per-arm figures, paired differences, claims.
pub(super) fn verdict(page: &mut Page, v: &Verdict) {
    let mut html = String::from("<table>\n");
    html.push_str(&header(
        &[
            "arm",
            "n",
            "mean %",
            "95% CI",
            "min",
            "max",
            "params",
            "added",
            "MMAC",
            "MFLOP/train",
            "step ms",
            "train s",
        ],
        1,
    ));
    for a in &v.arms {
        let i = &a.accuracy;
        html.push_str(&row(
            &[
                a.arm.clone(),
                format!("{}/{}", i.n, i.n + a.not_completed.len()),
                pct(i.mean),
                format!("[{}, {}]", pct(i.lo), pct(i.hi)),
                pct(a.range.0),
                pct(a.range.1),
                format!("{:.0}", a.parameters),
                format!("{:.0}", a.added),
                millions(a.forward_macs),
                millions(a.training_flops),
                format!("{:.2}", a.step_ms),
                format!("{:.1}", a.seconds),
            ],
            1,
        ));
    }
    html.push_str("</table>\n<table>\n");
    html.push_str(&header(
        &["paired difference", "pairs", "points", "95% CI"],
        1,
    ));
    for d in &v.differences {
        let p = |x: f64| {
            if x.is_finite() {
                format!("{:+.2}", 100.0 * x)
            } else {
                "-".to_owned()
            }
        };
        html.push_str(&row(
            &[
                format!("{} - {}", d.a, d.b),
                d.diff.n.to_string(),
                p(d.diff.mean),
                format!("[{}, {}]", p(d.diff.lo), p(d.diff.hi)),
            ],
            1,
        ));
    }
    html.push_str("</table>\n<table>\n");
    html.push_str(&header(&["outcome", "claim", "reason"], 3));
    for c in &v.claims {
        let outcome = c.outcome.to_string();
        let _ = writeln!(
            html,
            "<tr><td class=\"l {outcome}\">{outcome}</td><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
            escape(&c.claim),
            escape(&c.reason)
        );
    }
    let all = if v.all_pass() {
        Outcome::Pass
    } else {
        Outcome::Fail
    };
    let _ = writeln!(
        html,
        "</table>\n<p>verdict: <span class=\"{all}\">{}</span> (every claim must PASS)</p>",
        if v.all_pass() { "PASS" } else { "NOT PASS" }
    );
    page.raw(&html);
}

/// One line per run.
pub(super) fn runs(page: &mut Page, runs: &[RunData]) {
    let mut html = String::from("<table>\n");
    html.push_str(&header(
        &[
            "run",
            "arm",
            "status",
            "epochs",
            "acc %",
            "params",
            "added",
            "seeds",
            "MMAC",
            "MFLOP/train",
            "train s",
        ],
        3,
    ));
    for r in runs {
        let s = r.summary.as_ref();
        let last = r.epochs.last();
        html.push_str(&row(
            &[
                r.run_id.clone(),
                r.arm.clone(),
                r.status.clone(),
                last.map_or(0, |e| e.epoch).to_string(),
                last.map_or("-".to_owned(), |e| pct(e.validation_accuracy)),
                s.map_or("-".to_owned(), |s| s.parameters_final.to_string()),
                s.map_or("-".to_owned(), |s| s.parameters_added().to_string()),
                s.map_or("-".to_owned(), |s| {
                    let fossilized = s.seeds.iter().filter(|o| o.fossilized()).count();
                    format!("{fossilized}/{}", s.seeds.len())
                }),
                s.and_then(|s| s.forward_macs_final)
                    .map_or("-".to_owned(), |m| millions(m as f64)),
                s.and_then(|s| s.training_flops_per_image)
                    .map_or("-".to_owned(), millions),
                format!("{:.1}", r.epochs.iter().map(|e| e.seconds).sum::<f64>()),
            ],
            3,
        ));
    }
    html.push_str("</table>\n<p class=\"sub\">seeds = fossilized/germinated; MMAC = forward multiply-accumulates per image of the final model, millions; MFLOP/train = training FLOPs per image over the run (6 x its mean forward MACs), millions</p>\n");
    page.raw(&html);
}

/// The host's MACs per layer, and each seed's cost and images by stage.
pub(super) fn costs(page: &mut Page, run: &RunData) {
    let Some(s) = &run.summary else { return };
    let mut html = String::new();
    match &s.host_layer_macs {
        Some(layers) => {
            html.push_str("<table>\n");
            html.push_str(&header(&["host layer", "MMAC / image"], 1));
            for l in layers {
                html.push_str(&row(&[l.layer.clone(), millions(l.macs as f64)], 1));
            }
            html.push_str("</table>\n");
        }
        None => html.push_str("<p>The host does not count its layers' MACs.</p>\n"),
    }
    if !s.seeds.is_empty() {
        html.push_str("<table>\n");
        html.push_str(&header(
            &[
                "seed",
                "slot",
                "blueprint",
                "parameters",
                "MMAC / image",
                "reached",
                "ended",
                "images by stage",
            ],
            3,
        ));
        for o in &s.seeds {
            let stage = |x: &str| leyline::lifecycle::stage_label_of_name(x).to_owned();
            let images: Vec<String> = o
                .images_by_stage
                .iter()
                .map(|(st, n)| format!("{} {n}", stage(st)))
                .collect();
            html.push_str(&row(
                &[
                    o.seed.clone(),
                    o.slot.clone(),
                    o.blueprint.clone(),
                    o.parameters.to_string(),
                    millions(o.forward_macs as f64),
                    stage(&o.furthest),
                    stage(&o.last),
                    images.join(", "),
                ],
                3,
            ));
        }
        html.push_str("</table>\n");
    }
    page.raw(&html);
}

/// The legend of the timeline's stage colours.
pub(super) fn stage_legend(page: &mut Page) {
    let mut html = String::from("<p class=\"legend\">");
    for stage in super::charts::TIMELINE_STAGES {
        let c = super::charts::stage_colour(stage);
        let stage = leyline::lifecycle::stage_label(stage);
        let _ = write!(
            html,
            "<span style=\"background: rgb({}, {}, {})\"></span>{}",
            c.0,
            c.1,
            c.2,
            stage.to_lowercase()
        );
    }
    html.push_str("</p>\n");
    page.raw(&html);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_files_is_escaped() {
        assert_eq!(
            escape("<arm \"a\" & 'b'>"),
            "&lt;arm &quot;a&quot; &amp; &#39;b&#39;&gt;"
        );
        let mut page = Page::new("t<", "s");
        page.paragraph("<script>");
        let html = page.finish();
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
    }
}
