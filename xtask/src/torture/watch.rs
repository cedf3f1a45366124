//! Resource figures of the process under test: resident memory, open descriptors and CPU,
//! read from /proc.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sys;

/// One reading.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    pub rss_kib: u64,
    pub fds: usize,
}

pub fn read(pid: u32) -> Reading {
    Reading {
        rss_kib: sys::vm_rss_kib(pid).unwrap_or(0),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0),
    }
}

/// Samples `pid` every `every` until stopped: the peaks and the CPU used meanwhile.
pub struct Watch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(f64, Reading)>>,
    pid: u32,
    cpu0: f64,
    t0: Instant,
}

/// What a [`Watch`] saw.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    pub peak: Reading,
    /// Cores used on average (user + system CPU seconds per second).
    pub cores: f64,
}

impl Watch {
    pub fn start(pid: u32, every: Duration) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let t0 = Instant::now();
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                out.push((t0.elapsed().as_secs_f64(), read(pid)));
                std::thread::sleep(every);
            }
            out
        });
        Watch {
            stop,
            thread,
            pid,
            cpu0: sys::cpu_seconds(Some(pid)),
            t0,
        }
    }

    pub fn finish(self) -> Watched {
        let cpu = sys::cpu_seconds(Some(self.pid)) - self.cpu0;
        let secs = self.t0.elapsed().as_secs_f64().max(1e-3);
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.thread.join().unwrap_or_default();
        let peak = Reading {
            rss_kib: samples.iter().map(|(_, r)| r.rss_kib).max().unwrap_or(0),
            fds: samples.iter().map(|(_, r)| r.fds).max().unwrap_or(0),
        };
        Watched {
            peak,
            cores: cpu / secs,
        }
    }
}

/// Least-squares slope of `y` over `x` (units of y per unit of x).
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

#[cfg(test)]
mod tests {
    use super::slope;

    #[test]
    fn slope_of_a_line_and_of_a_flat_series() {
        let line: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), 3.0 * f64::from(i) + 1.0))
            .collect();
        assert!((slope(&line) - 3.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), 5.0)).collect();
        assert_eq!(slope(&flat), 0.0);
        assert_eq!(slope(&[(1.0, 2.0)]), 0.0);
    }
}
