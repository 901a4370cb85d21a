//! Topic names and payload types of the chat protocol, and the MessagePack/JSON codec.
