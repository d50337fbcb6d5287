-- What ingestion changed to store an image as a viewer shows it (first frame of an animation,
-- EXIF rotation, 16-bit scaling, transparency composited); empty when the original bytes were kept.
ALTER TABLE images ADD COLUMN note VARCHAR DEFAULT '';
