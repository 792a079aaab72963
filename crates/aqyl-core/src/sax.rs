//! SAX and SensorSAX (symbolic aggregate approximation), as DESIGN.md defines them.
