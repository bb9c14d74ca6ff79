//! What one run measures and how much of it: the full benchmark, or the smoke run.
//!
//! Counts are sized from the rate a scenario is expected to reach so that each measured
//! run lasts a few seconds: long enough to be steady, short enough that `make bench`
//! stays within ten minutes on two cores.

use std::time::Duration;

use crate::image::Size;

/// One consumer configuration of the grid.
#[derive(Clone, Copy, Debug)]
pub struct ConsumerRun {
    /// The image size of its jobs.
    pub size: Size,
    pub processes: usize,
    pub prefetch: u16,
    /// Latency the stubs add to each request (a job makes two: blob PUT, worker POST).
    pub stub_latency: Duration,
    /// Whether the stubs do the real image work (fetch, decode, thumbnail, store).
    pub image_work: bool,
}

#[derive(Clone, Debug)]
pub struct Plan {
    /// Small, reference and large image; targets are checked at the reference size.
    pub sizes: [Size; 3],
    /// Seconds a measured run should last.
    pub run_secs: f64,
    /// Bounds of the message count of one measured run.
    pub min_count: usize,
    pub max_count: usize,
    /// Confirm channels and publishes in flight on each, for the raw ceiling and for
    /// pre-filling queues.
    pub publish_channels: usize,
    pub publish_window_bytes: usize,
    /// Consumers (channels) of the raw consume ceiling, and the prefetch values it is
    /// measured at (the consumer's default and the grid's largest); the ceiling is the
    /// best of them.
    pub ceiling_consumers: usize,
    pub ceiling_prefetch: Vec<u16>,
    /// Repetitions of the ceiling; its figures are their medians.
    pub ceiling_repeats: usize,
    /// Concurrent HTTP requests of the ingress load.
    pub ingress_concurrency: usize,
    /// The consumer grid, at the reference size.
    pub consumer_runs: Vec<ConsumerRun>,
    /// Offered rates of the end-to-end runs, in jobs per second, and how long each lasts.
    pub e2e_rates: Vec<u32>,
    pub e2e_secs: f64,
    pub e2e_consumers: usize,
    pub e2e_prefetch: u16,
    /// Jobs in the index of the memory scenario (one run each).
    pub index_jobs: Vec<usize>,
    /// Image and prefetch values of the consumer memory scenario.
    pub memory_image: Size,
    pub memory_prefetch: Vec<u16>,
    /// Sizes of the claim check's part (issue 17).
    pub claim_sizes: Vec<Size>,
    /// Jobs and their times for the index at scale (issue 18).
    pub index_scale: Vec<(usize, crate::index_scale::Times)>,
}

/// The consumer curve of issue 10: processes by prefetch, at the reference size.
pub const CURVE_PROCESSES: [usize; 3] = [1, 2, 4];
pub const CURVE_PREFETCH: [u16; 3] = [8, 32, 128];

const MS_0: Duration = Duration::ZERO;
const MS_20: Duration = Duration::from_millis(20);

fn run(
    size: Size,
    processes: usize,
    prefetch: u16,
    stub_latency: Duration,
    image_work: bool,
) -> ConsumerRun {
    ConsumerRun {
        size,
        processes,
        prefetch,
        stub_latency,
        image_work,
    }
}

impl Plan {
    pub fn full() -> Plan {
        let sizes = [
            Size::new("1 KiB", 1024),
            Size::new("145 KiB", 145 * 1024),
            // Just under MAX_BODY_BYTES and the broker's max_message_size (3 MiB): the
            // generated PNG lands within a few per cent of its size.
            Size::new("3 MiB", 3 * 1024 * 1024 - 64 * 1024),
        ];
        let (reference, large) = (sizes[1], sizes[2]);
        // The curve: 1, 2 and 4 processes at prefetch 8, 32 and 128.
        let mut consumer_runs = Vec::new();
        for processes in CURVE_PROCESSES {
            for prefetch in CURVE_PREFETCH {
                consumer_runs.push(run(reference, processes, prefetch, MS_0, false));
            }
        }
        consumer_runs.extend([
            run(reference, 2, 32, MS_20, false),
            run(reference, 2, 32, MS_0, true),
            run(large, 1, 8, MS_0, false),
            run(large, 1, 32, MS_0, false),
        ]);
        Plan {
            sizes,
            run_secs: 3.0,
            min_count: 100,
            max_count: 20_000,
            publish_channels: 4,
            publish_window_bytes: 128 * 1024 * 1024,
            ceiling_consumers: 1,
            ceiling_prefetch: vec![32, 128],
            ceiling_repeats: 3,
            ingress_concurrency: 48,
            consumer_runs,
            e2e_rates: vec![100, 500],
            e2e_secs: 5.0,
            e2e_consumers: 2,
            e2e_prefetch: 32,
            index_jobs: vec![100_000, 1_000_000, 5_000_000],
            memory_image: large,
            memory_prefetch: vec![8, 32],
            claim_sizes: vec![reference, large],
            index_scale: vec![
                (10_000_000, crate::index_scale::Times::Spread),
                (1_000_000, crate::index_scale::Times::Bursts),
            ],
        }
    }

    pub fn smoke() -> Plan {
        let sizes = [
            Size::new("1 KiB", 1024),
            Size::new("8 KiB", 8 * 1024),
            Size::new("32 KiB", 32 * 1024),
        ];
        Plan {
            sizes,
            run_secs: 0.2,
            min_count: 10,
            max_count: 40,
            publish_channels: 2,
            publish_window_bytes: 1024 * 1024,
            ceiling_consumers: 1,
            ceiling_prefetch: vec![4, 8],
            ceiling_repeats: 1,
            ingress_concurrency: 4,
            consumer_runs: vec![
                run(sizes[1], 1, 8, MS_0, false),
                run(sizes[1], 2, 8, MS_0, false),
                run(sizes[1], 2, 4, MS_20, false),
                run(sizes[1], 1, 4, MS_0, true),
                run(sizes[2], 1, 4, MS_0, false),
            ],
            e2e_rates: vec![20],
            e2e_secs: 1.0,
            e2e_consumers: 1,
            e2e_prefetch: 8,
            index_jobs: vec![1_000, 2_000],
            memory_image: sizes[2],
            memory_prefetch: vec![4],
            claim_sizes: vec![Size::new("70 KiB", 70 * 1024)],
            index_scale: vec![(3_000, crate::index_scale::Times::Bursts)],
        }
    }

    pub fn reference(&self) -> Size {
        self.sizes[1]
    }

    /// Messages for one measured run at an expected `rate` per second.
    pub fn count_for(&self, rate: f64) -> usize {
        let n = if rate.is_finite() && rate > 0.0 {
            (rate * self.run_secs) as usize
        } else {
            self.min_count
        };
        n.clamp(self.min_count, self.max_count)
    }

    /// Publishes in flight per channel for messages of `size` bytes: the byte budget
    /// shared by the channels, at least 4 and at most 256 messages each.
    pub fn publish_window(&self, size: usize) -> usize {
        (self.publish_window_bytes / self.publish_channels.max(1) / size.max(1)).clamp(4, 256)
    }
}
