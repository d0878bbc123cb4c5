//! The job half of thumbnail-jobs: for each image `thumbnail-api` queued,
//! shrinks it to fit 64×64 (box filter, aspect ratio kept) and stores the
//! PPM in the cache namespace both functions share (deploy both with
//! `--cache thumbnails`) under the image's key for 25 hours.
//!
//! Jobs are delivered at least once, so the work is idempotent on the key:
//! a thumbnail already stored is not made again, and storing it twice
//! stores the same bytes. An image that does not decode (the API checks
//! before queueing, so only a sender other than the API can cause it)
//! fails every attempt and ends in the queue's dead letters.

use std::time::Duration;

use wedge_sdk::{Job, cache, job_handler};

use thumbnail_core::{Image, THUMBNAIL_SIDE_MAX, key};

/// How long a thumbnail stays in the cache: longer than the queue remembers an
/// idempotency key (24 h by default), so an image sent again within that time,
/// which answers the job that made its thumbnail, finds the thumbnail still there
/// (unless the node's cache evicted it to stay under its byte cap).
const THUMBNAIL_TTL: Duration = Duration::from_secs(25 * 3600);

#[job_handler]
fn handle(job: Job) -> Result<(), Box<dyn std::error::Error>> {
    let key = key(&job.payload);
    if cache::get(&key)?.is_some() {
        println!("job {}: thumbnail {key} is already stored", job.id);
        return Ok(());
    }
    let image = Image::decode(&job.payload)?;
    let thumbnail = image.thumbnail(THUMBNAIL_SIDE_MAX);
    cache::set(&key, thumbnail.encode(), Some(THUMBNAIL_TTL))?;
    println!(
        "job {} (attempt {}): {}×{} -> {}×{} as {key}",
        job.id, job.attempt, image.width, image.height, thumbnail.width, thumbnail.height
    );
    Ok(())
}
