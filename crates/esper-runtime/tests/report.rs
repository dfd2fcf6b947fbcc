//! `esper report` on a tiny cohort and one of its runs: the page's structure,
//! and — where Chromium is installed — what a browser shows of it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{esper_in, text};

/// A cohort of two arms (the host, and one scripted germination at epoch 1
/// so that a seed has a timeline) x one seed x two epochs.
fn tiny_cohort(dir: &Path) -> PathBuf {
    std::fs::write(
        dir.join("seeds.toml"),
        "[[action]]\nat_epoch = 1\nop = \"germinate\"\nslot = \"r0\"\nblueprint = \"dense.mlp_small\"\n",
    )
    .unwrap();
    let text = format!(
        "name = \"pics\"\nseeds = [31]\ndir = \"{}\"\n[config.tolaria]\nhost = \"mlp\"\nepochs = 2\ntrain_size = 512\n\
         [[arm]]\nkind = \"static-small\"\n[[arm]]\nkind = \"fixed-schedule\"\nscript = \"seeds.toml\"\n",
        dir.join("runs").display()
    );
    let path = dir.join("pics.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Chromium's path, if this machine has it.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Renders `page` headless at 1000 x `height` and returns the RGBA pixels.
fn screenshot(browser: &Path, page: &Path, scratch: &Path, height: u32) -> (u32, u32, Vec<u8>) {
    let shot = scratch.join("shot.png");
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            scratch.join("profile").display()
        ))
        .arg(format!("--window-size=1000,{height}"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.canonicalize().unwrap().display()))
        .output()
        .unwrap();
    assert!(shot.is_file(), "no screenshot: {}", text(&out));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let rgba: Vec<u8> = match info.color_type {
        png::ColorType::Rgba => pixels[..info.buffer_size()].to_vec(),
        png::ColorType::Rgb => pixels[..info.buffer_size()]
            .chunks(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        other => panic!("unexpected screenshot colour type {other:?}"),
    };
    (info.width, info.height, rgba)
}

/// Pixels within 12 of `rgb` on every channel.
fn near(rgba: &[u8], rgb: [u8; 3]) -> usize {
    rgba.chunks(4)
        .filter(|p| (0..3).all(|i| p[i].abs_diff(rgb[i]) <= 12))
        .count()
}

#[test]
fn a_report_has_every_chart_and_table_and_renders_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny_cohort(dir.path());
    let file = file.to_str().unwrap();
    let run = esper_in(&["cohort", file, "--jobs", "2"], dir.path(), &[]);
    // Two arms make no verdict (exit 2), but both runs finish.
    assert!(
        text(&run).contains("2 run(s) now, 0 skipped, 0 failed"),
        "{}",
        text(&run)
    );

    let out = esper_in(&["report", file], dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let page = dir.path().join("runs/cohorts/pics/report.html");
    assert!(
        text(&out).contains("cohorts/pics/report.html"),
        "{}",
        text(&out)
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    // Self-contained: nothing to fetch.
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http") && !html.contains("<script")
    );
    // Accuracy, accuracy vs parameters, step time, seed timeline.
    assert_eq!(html.matches("<svg").count(), 4, "{html}");
    assert!(
        html.contains("no verdict: cohort pics has no static-big arm"),
        "{html}"
    );
    assert!(
        html.contains("fixed-schedule s31: seed-r0-"),
        "the seed's timeline row"
    );
    assert!(html.contains("pics-static-small-s31") && html.contains("completed"));

    // One run, by id under run.dir.
    let runs = dir.path().join("runs");
    let out = esper_in(
        &["report", "pics-fixed-schedule-s31"],
        dir.path(),
        &[("ESPER_RUN__DIR", runs.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", text(&out));
    let run_page = runs.join("pics-fixed-schedule-s31/report.html");
    let run_html = std::fs::read_to_string(&run_page).unwrap();
    assert_eq!(run_html.matches("<svg").count(), 3, "{run_html}");
    assert!(run_html.contains("dense.mlp_small") && run_html.contains("fc1"));

    // Neither a cohort nor a run: a clear error, nothing written.
    let out = esper_in(&["report", "no-such-run"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("not a cohort file, a run directory, or a run id"),
        "{}",
        text(&out)
    );

    let Some(browser) = chromium() else {
        eprintln!(
            "SKIPPED: the browser check of the report needs Chromium (apt-get install chromium); the page's structure was checked"
        );
        return;
    };
    let (w, h, rgba) = screenshot(&browser, &page, dir.path(), 2400);
    assert_eq!((w, h), (1000, 2400));
    let pixels = rgba.len() / 4;
    let white = near(&rgba, [255, 255, 255]);
    assert!(
        white < pixels * 97 / 100,
        "the page is (nearly) blank: {white} of {pixels} white"
    );
    // The charts drew: the first two arms' line colours and the FAIL-less
    // verdict's error box are on screen.
    assert!(
        near(&rgba, [0, 114, 178]) > 200,
        "no static-small series on screen"
    );
    assert!(
        near(&rgba, [213, 94, 0]) > 200,
        "no fixed-schedule series on screen"
    );
    assert!(
        near(&rgba, [251, 227, 222]) > 1000,
        "no error box in place of the verdict"
    );
    let (_, _, run_rgba) = screenshot(&browser, &run_page, dir.path(), 2400);
    // The seed timeline's GERMINATED / TRAINING cells.
    assert!(
        near(&run_rgba, [190, 190, 190]) + near(&run_rgba, [230, 159, 0]) > 500,
        "no seed timeline on screen"
    );
}
