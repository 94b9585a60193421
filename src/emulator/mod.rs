//! Local emulator of the Qrypt API.
