//! `ingest_path`: the server reads GeoTIFF/COG files under its ingest
//! roots and ingests them as `pixelquery ingest` does.

use serde_json::Value;

use super::ActionDoc;
use crate::auth::Role;
use crate::collection;
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::wire;

pub struct IngestPath(IngestPathBody);

impl IngestPath {
    pub const DOC: ActionDoc = ActionDoc {
        name: "ingest_path",
        role: Role::Admin,
        description: "The server reads GeoTIFF/COG files it can see (local paths, GDAL /vsi... paths) under its --ingest-root directories and ingests them as `pixelquery ingest` does. Body: {\"collection\", \"paths\": [...], \"bands\"?: \"1:blue,...\", \"time\"?, \"resampling\"?, \"replace\"?: false, \"baseline\"?: \"04.00\"}. Returns {\"files\", \"scenes\": [...], \"failures\": [{\"path\", \"reason\"}]}.",
        takes_write_slot: true,
    };

    pub fn parse(body: &[u8]) -> Result<Self> {
        let b: IngestPathBody =
            serde_json::from_slice(body).map_err(|e| Error::invalid("action.body", String::from_utf8_lossy(body), &format!("malformed JSON: {e}")))?;
        collection::validate_collection_name("collection", &b.collection)?;
        Ok(IngestPath(b))
    }

    pub fn apply(self, state: &AppState) -> Result<Value> {
        Ok(serde_json::to_value(ingest_path(state, self.0)?).unwrap_or(Value::Null))
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestPathBody {
    collection: String,
    paths: Vec<String>,
    #[serde(default)]
    bands: Option<String>,
    #[serde(default)]
    time: Option<Value>,
    #[serde(default)]
    resampling: Option<String>,
    #[serde(default)]
    replace: bool,
    #[serde(default)]
    baseline: Option<String>,
}

fn ingest_path(state: &AppState, b: IngestPathBody) -> Result<crate::cog::send::IngestReport> {
    let started = std::time::Instant::now();
    let store = state.warehouse.collection(&b.collection)?;
    if b.paths.is_empty() {
        return Err(Error::invalid("paths", "[]", "give at least one file or directory"));
    }
    let paths = b.paths.iter().map(|p| crate::cog::check_allowed(p, &state.ingest_roots)).collect::<Result<Vec<_>>>()?;
    let time_ms = wire::opt_time("time", b.time)?;
    let opts = crate::cog::CogOptions {
        collection: b.collection.clone(),
        collection_bands: store.meta.bands.iter().map(|b| b.name.clone()).collect(),
        band_map: b.bands.as_deref().map(crate::cog::parse_band_map).transpose()?.unwrap_or_default(),
        time_ms,
        resampling: b.resampling.unwrap_or_default(),
        replace: b.replace,
        profile: store.meta.profile.clone(),
        baseline: b.baseline,
    };
    let (files, mut failures) = crate::cog::discover(&paths);
    // A directory may hold links leading outside the roots: check each file.
    let (files, outside): (Vec<String>, Vec<String>) = files.into_iter().partition(|f| crate::cog::check_allowed(f, &state.ingest_roots).is_ok());
    failures.extend(outside.into_iter().map(|path| crate::cog::Failure { path, reason: "outside the server's allowed ingest roots".into() }));
    let (scenes, more) = crate::cog::plan(&files, &opts);
    failures.extend(more);
    let handle = tokio::runtime::Handle::current();
    let mut report = crate::cog::send::IngestReport { files: files.len(), ..Default::default() };
    for plan in scenes {
        let spec = match wire::decode_ingest(&prost::Message::encode_to_vec(&plan.request)) {
            Ok(s) => s,
            Err(e) => {
                failures.extend(plan.failures(&e.to_string()));
                continue;
            }
        };
        let put = handle
            .block_on(async { crate::ingest::ingest(state.warehouse.clone(), state.ingest.clone(), spec, crate::cog::stream_scene(&plan, |_| {})).await });
        match put {
            Ok(put) => {
                report.megabytes += plan.bytes as f64 / 1e6;
                report.scenes.push(crate::cog::send::SceneResult::new(&plan, &put));
            }
            Err(e) => failures.extend(plan.failures(&e.to_string())),
        }
    }
    report.failures = failures.into_iter().map(Into::into).collect();
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}
