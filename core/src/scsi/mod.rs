//! SCSI: CDB decoding, sense data, unit attentions, reservations, mode pages and the executor.
