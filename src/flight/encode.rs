//! An answer's pieces framed as Flight messages: the schema first, then
//! each batch encoded as one Arrow IPC message, and stored messages as
//! their bytes.

use arrow_flight::{FlightData, SchemaAsIpc};
use arrow_ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions};

use crate::error::{Error, Result};
use crate::query::{Answer, Piece};

/// Writes `answer` as Flight messages, calling `emit` until it returns
/// false. Blocking (the answer reads files).
pub fn write_answer(answer: &Answer, mut emit: impl FnMut(FlightData) -> bool) -> Result<()> {
    let opts = IpcWriteOptions::default();
    if !emit(SchemaAsIpc::new(answer.schema()?.as_ref(), &opts).into()) {
        return Ok(());
    }
    let encoder = IpcDataGenerator::default();
    let mut tracker = DictionaryTracker::new(false);
    let mut context = IpcWriteContext::default();
    let mut failed = None;
    answer.write(&mut |piece| match piece {
        Piece::Stored { header, body } => emit(FlightData { data_header: header, data_body: body, ..Default::default() }),
        Piece::Batch(batch) => match encoder.encode(&batch, &mut tracker, &opts, &mut context) {
            Ok((_, data)) => emit(data.into()),
            Err(e) => {
                failed = Some(Error::arrow("encoding a batch")(e));
                false
            }
        },
    })?;
    failed.map_or(Ok(()), Err)
}
