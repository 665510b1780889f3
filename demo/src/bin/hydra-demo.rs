//! `hydra-demo`: the video-streaming failover demo (HydraNet-FT's MPEG movie demo, measured).
//!
//! Builds a 3-replica ft lab whose backends stream an MPEG-TS movie paced at its frame rate,
//! plays it in the client namespace with ffmpeg decoding every frame (`-f framemd5`), kills
//! the primary at a third and the next primary at two thirds, and compares every frame's md5
//! with a local decode. Then the same through an nginx `stream` proxy to one backend, killed
//! at a third, for contrast. Prints a report and draws both timelines into one PNG.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use plotters::prelude::*;
use serde_json::json;

/// Stream a movie through HydraNet while its servers crash, and through an nginx proxy for
/// contrast; report every frame.
#[derive(Parser)]
#[command(name = "hydra-demo", version, about)]
struct Args {
    /// Length of the movie in seconds (30 frames per second).
    #[arg(long, default_value_t = 50)]
    seconds: u32,
    /// Where the movie, the report (demo.json) and the timeline PNG go.
    #[arg(long, default_value = "target/demo")]
    out: PathBuf,
    /// Skip the nginx contrast run.
    #[arg(long)]
    no_contrast: bool,
}

const FPS: u32 = 30;
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn main() {
    if let Err(e) = run() {
        eprintln!("hydra-demo: {e:#}");
        std::process::exit(1);
    }
}

fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating hydra-demo")?;
    let p = exe.parent().map(|d| d.join(name)).unwrap_or_default();
    if !p.exists() {
        bail!("cannot find {name} next to hydra-demo: build with cargo build --release --bins");
    }
    Ok(p)
}

fn need(tool: &str, package: &str) -> anyhow::Result<()> {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("{tool} is missing: install it with apt-get install {package} (scripts/demo does)");
    }
    Ok(())
}

/// Makes the movie (cached) and returns it with the md5 of every frame of a local decode.
fn movie(out: &Path, seconds: u32) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let www = out.join("www");
    std::fs::create_dir_all(&www)?;
    let file = www.join(format!("movie-{seconds}s.ts"));
    if !file.exists() {
        eprintln!("demo: encoding a {seconds} s test movie with a frame counter (ffmpeg)");
        let text = if Path::new(FONT).exists() {
            format!(",drawtext=fontfile={FONT}:text='frame %{{frame_num}}':x=24:y=24:fontsize=48:fontcolor=white:box=1:boxcolor=black@0.6")
        } else {
            String::new()
        };
        let st = Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
            ])
            .arg(format!("testsrc2=size=640x360:rate={FPS}"))
            .args(["-t", &seconds.to_string(), "-vf"])
            .arg(format!("format=yuv420p{text}"))
            .args([
                "-c:v",
                "mpeg2video",
                "-b:v",
                "2M",
                "-minrate",
                "2M",
                "-maxrate",
                "2M",
                "-bufsize",
                "1M",
                "-g",
                "15",
                "-f",
                "mpegts",
                "-muxrate",
                "2600k",
            ])
            .arg(&file)
            .status()
            .context("running ffmpeg")?;
        if !st.success() {
            let _ = std::fs::remove_file(&file);
            bail!("ffmpeg could not encode the movie");
        }
    }
    let o = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i"])
        .arg(&file)
        .args(["-f", "framemd5", "pipe:1"])
        .output()
        .context("decoding the movie locally")?;
    let md5s = parse_framemd5(&String::from_utf8_lossy(&o.stdout));
    if md5s.is_empty() {
        bail!("the local decode of {} gave no frames", file.display());
    }
    Ok((file, md5s))
}

fn parse_framemd5(text: &str) -> Vec<String> {
    text.lines().filter_map(framemd5_line).collect()
}

fn framemd5_line(l: &str) -> Option<String> {
    if l.starts_with('#') {
        return None;
    }
    let md5 = l.rsplit(',').next()?.trim();
    (md5.len() == 32).then(|| md5.to_string())
}

/// One playback: when each frame arrived and what it was.
#[derive(Default, Clone)]
struct Playback {
    frames: Vec<(f64, String)>,
    kills: Vec<(f64, String)>,
    exit_ok: bool,
}

struct Lab {
    hydractl: PathBuf,
    name: String,
}

impl Lab {
    fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let o = Command::new(&self.hydractl)
            .arg("lab")
            .args(args)
            .output()
            .context("running hydractl")?;
        if !o.status.success() {
            bail!(
                "hydractl lab {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).to_string())
    }

    fn exec(&self, node: &str, script: &str) -> anyhow::Result<String> {
        self.ctl(&["exec", "--name", &self.name, node, "--", "sh", "-c", script])
    }

    fn primary(&self) -> anyhow::Result<String> {
        let sock = format!("/run/hydranet/lab-{}/redir.sock", self.name);
        let o = Command::new(&self.hydractl)
            .args(["status", "--json", "--socket", &sock])
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
        let id = v["views"][0]["primary"]
            .as_u64()
            .context("the redirector has no ft view")?;
        Ok(format!("h{id}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(&self.hydractl)
            .args(["lab", "down", "--name", &self.name])
            .output();
    }
}

/// Plays `url` in the client namespace, killing what `victim` names at each of `kill_at`.
fn play(
    lab: &Lab,
    url: &str,
    total: usize,
    kill_at: &[f64],
    victim: &dyn Fn(&Lab) -> anyhow::Result<String>,
    label: &str,
) -> anyhow::Result<Playback> {
    let mut child: Child = Command::new(&lab.hydractl)
        .args(["lab", "exec", "--name", &lab.name, "client", "--"])
        .args(["ffmpeg", "-hide_banner", "-loglevel", "error"])
        .args(["-probesize", "200000", "-analyzeduration", "500000"])
        .args(["-i", url, "-f", "framemd5", "-flush_packets", "1", "pipe:1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the player")?;
    let start = Instant::now();
    let frames = Arc::new(Mutex::new(Vec::new()));
    let stdout = child.stdout.take().context("player stdout")?;
    let sink = frames.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(md5) = framemd5_line(&line) {
                let t = start.elapsed().as_secs_f64();
                if let Ok(mut f) = sink.lock() {
                    f.push((t, md5));
                }
            }
        }
    });
    let mut kills = Vec::new();
    let mut pending: Vec<f64> = kill_at.to_vec();
    let deadline = start + Duration::from_secs_f64(total as f64 / f64::from(FPS) * 2.0 + 30.0);
    let exit_ok = loop {
        if let Some(st) = child.try_wait()? {
            break st.success();
        }
        let t = start.elapsed().as_secs_f64();
        if let Some(&k) = pending.first() {
            if t >= k {
                pending.remove(0);
                let v = victim(lab)?;
                lab.ctl(&["kill", "--name", &lab.name, &v])?;
                kills.push((t, v));
            }
        }
        let n = frames.lock().map(|f| f.len()).unwrap_or(0);
        eprint!(
            "\r  {label}: {t:5.1} s, frame {n}/{total}, kills {}   ",
            kills.len()
        );
        let _ = std::io::stderr().flush();
        if Instant::now() > deadline {
            let _ = child.kill();
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!();
    let _ = reader.join();
    let frames = frames.lock().map(|f| f.clone()).unwrap_or_default();
    Ok(Playback {
        frames,
        kills,
        exit_ok,
    })
}

struct Summary {
    played: usize,
    matching: usize,
    longest_gap_ms: f64,
}

fn summarize(p: &Playback, reference: &[String]) -> Summary {
    let matching = p
        .frames
        .iter()
        .zip(reference)
        .take_while(|((_, a), b)| a == *b)
        .count();
    let longest_gap_ms = p
        .frames
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * 1e3)
        .fold(0.0, f64::max);
    Summary {
        played: p.frames.len(),
        matching,
        longest_gap_ms,
    }
}

fn draw(path: &Path, runs: &[(&str, &Playback)], total: usize, secs: f64) -> anyhow::Result<()> {
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        control::chart_font().map_err(anyhow::Error::msg)?,
    )
    .map_err(|_| anyhow::anyhow!("{} is not a font plotters can read", control::CHART_FONT))?;
    let root = BitMapBackend::new(path, (1400, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, runs.len()));
    for (area, (title, p)) in panels.iter().zip(runs) {
        let xmax = p.frames.last().map_or(secs, |f| f.0).max(secs).ceil();
        let mut chart = ChartBuilder::on(area)
            .caption(*title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax, 0f64..total as f64 * 1.05)?;
        chart
            .configure_mesh()
            .x_desc("wall-clock time (s)")
            .y_desc("frame played")
            .draw()?;
        chart.draw_series(
            p.frames
                .iter()
                .enumerate()
                .map(|(i, (t, _))| Circle::new((*t, i as f64), 1, BLUE.filled())),
        )?;
        for (t, who) in &p.kills {
            chart
                .draw_series(LineSeries::new(
                    vec![(*t, 0.0), (*t, total as f64)],
                    RED.stroke_width(2),
                ))?
                .label(format!("kill {who} at {t:.1} s"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], RED));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    if !nix_is_root() {
        bail!("hydra-demo needs root (it builds network namespaces): run it with sudo");
    }
    need("ffmpeg", "ffmpeg")?;
    let hydractl = bin("hydractl")?;
    let fileserver = bin("hydra-fileserver")?;
    std::fs::create_dir_all(&args.out)?;
    let out = std::fs::canonicalize(&args.out)?;
    let (file, reference) = movie(&out, args.seconds)?;
    let total = reference.len();
    let secs = total as f64 / f64::from(FPS);
    let size = std::fs::metadata(&file)?.len();
    let rate = (size as f64 / secs).ceil() as u64;
    let www = file.parent().context("movie dir")?.to_path_buf();
    let name_of = file
        .file_name()
        .and_then(|n| n.to_str())
        .context("movie name")?
        .to_string();
    eprintln!(
        "demo: {} frames at {FPS} fps ({secs:.1} s, {size} bytes, streamed at {rate} B/s)",
        total
    );

    // HydraNet ft: 3 replicas, kill the primary at 1/3 and the next primary at 2/3.
    let pid = std::process::id() % 10_000;
    let lab = Lab {
        hydractl: hydractl.clone(),
        name: format!("demo{pid}"),
    };
    let backend = format!(
        "exec {} --root {} --listen 127.0.0.1:8080 --rate {rate}",
        fileserver.display(),
        www.display()
    );
    eprintln!("demo: lab up (3 replicas, ft mode)");
    lab.ctl(&[
        "up",
        "--name",
        &lab.name,
        "--replicas",
        "3",
        "--mode",
        "ft",
        "--backend-cmd",
        &backend,
    ])?;
    let url = format!("http://198.19.0.10/{name_of}");
    let ft = play(
        &lab,
        &url,
        total,
        &[secs / 3.0, secs * 2.0 / 3.0],
        &|l: &Lab| l.primary(),
        "HydraNet ft",
    )?;
    drop(lab);

    // Contrast: an nginx stream proxy in the redirector namespace to one backend.
    let contrast = if args.no_contrast {
        None
    } else {
        need("nginx", "nginx libnginx-mod-stream")?;
        let lab = Lab {
            hydractl: hydractl.clone(),
            name: format!("demn{pid}"),
        };
        eprintln!("demo: lab up (1 backend behind an nginx stream proxy)");
        lab.ctl(&[
            "up",
            "--name",
            &lab.name,
            "--replicas",
            "1",
            "--backend-cmd",
            &backend,
        ])?;
        let state = PathBuf::from(format!("/run/hydranet/lab-{}", lab.name));
        lab.exec(
            "h1",
            &format!(
                "setsid {} --root {} --listen 198.18.1.2:8081 --rate {rate} >/dev/null 2>&1 < /dev/null &",
                fileserver.display(),
                www.display()
            ),
        )?;
        let conf = state.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nuser root;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/nginx.log;\nevents {{ worker_connections 1024; }}\nstream {{ server {{ listen 198.18.0.1:8080; proxy_pass 198.18.1.2:8081; }} }}\n",
                p = state.display()
            ),
        )?;
        lab.exec("redir", &format!("nginx -c {}", conf.display()))?;
        std::thread::sleep(Duration::from_millis(300));
        let p = play(
            &lab,
            &format!("http://198.18.0.1:8080/{name_of}"),
            total,
            &[secs / 3.0],
            &|_: &Lab| Ok("h1".to_string()),
            "nginx stream proxy",
        )?;
        Some(p)
    };

    // Report.
    let s = summarize(&ft, &reference);
    println!("\nHydraNet ft, 3 replicas, primary killed twice:");
    println!("  frames played     {} of {} sent", s.played, total);
    println!(
        "  md5 equal to a local decode: {} of {} ({})",
        s.matching,
        total,
        if s.matching == total {
            "all"
        } else {
            "NOT ALL"
        }
    );
    println!(
        "  longest gap between frames: {:.0} ms (frame interval {:.1} ms)",
        s.longest_gap_ms,
        1e3 / f64::from(FPS)
    );
    for (t, who) in &ft.kills {
        println!("  killed {who} (the primary) at {t:.1} s");
    }
    let mut report = json!({
        "frames_sent": total,
        "hydranet": {
            "frames_played": s.played,
            "frames_matching": s.matching,
            "longest_gap_ms": s.longest_gap_ms,
            "player_exit_ok": ft.exit_ok,
            "kills": ft.kills.iter().map(|(t, w)| json!({"at_s": t, "node": w})).collect::<Vec<_>>(),
        },
    });
    let mut runs = vec![("HydraNet ft: primary killed twice", &ft)];
    if let Some(c) = &contrast {
        let cs = summarize(c, &reference);
        println!("nginx stream proxy, its one backend killed at a third:");
        println!(
            "  frames played     {} of {} sent (stream {})",
            cs.played,
            total,
            if cs.played < total {
                "broke"
            } else {
                "survived"
            }
        );
        for (t, who) in &c.kills {
            println!("  killed {who} at {t:.1} s");
        }
        report["nginx"] = json!({
            "frames_played": cs.played,
            "frames_matching": cs.matching,
            "player_exit_ok": c.exit_ok,
            "kills": c.kills.iter().map(|(t, w)| json!({"at_s": t, "node": w})).collect::<Vec<_>>(),
        });
        runs.push(("nginx stream proxy: backend killed", c));
    }
    let png = out.join("demo-timeline.png");
    draw(&png, &runs, total, secs).context("drawing the timeline")?;
    std::fs::write(
        out.join("demo.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("timeline: {}", png.display());
    println!("report:   {}", out.join("demo.json").display());
    if s.matching != total || s.played != total {
        bail!("HydraNet did not deliver every frame intact");
    }
    Ok(())
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framemd5_lines_are_parsed() {
        let t = "#format: frame checksums\n#tb 0: 1/30\n0,          0,          0,        1,   345600, 0123456789abcdef0123456789abcdef\n";
        assert_eq!(parse_framemd5(t), vec!["0123456789abcdef0123456789abcdef"]);
    }
}
