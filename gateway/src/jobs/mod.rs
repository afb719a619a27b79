//! What the gateway does with jobs: submit and retry, cancel (and take cancelled ones off the queue), read and
//! list records, follow running jobs live, take uploads, stream archives of a job's files, and put a chat
//! completion to a model agent as a job.

pub mod cancel;
pub mod chat;
pub mod completed;
pub mod conversations;
pub mod export;
pub mod follow;
pub mod followed;
pub mod history;
pub mod import;
pub mod index;
pub mod listing;
pub mod live;
pub mod records;
pub mod scan;
pub mod session_index;
pub mod sessions;
pub mod submit;
pub mod symbols;
pub mod tar;
pub mod unqueue;
pub mod upload;
