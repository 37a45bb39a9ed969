//! Decoding any bytes as a wire message never panics; whatever decodes
//! re-encodes to a frame that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unionsync_core::Message;

fuzz_target!(|frame: &[u8]| {
    if let Ok(message) = Message::decode(frame) {
        let again = message.encode().expect("a decoded message encodes");
        assert_eq!(Message::decode(&again).expect("re-decodes"), message);
    }
});
