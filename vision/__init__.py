"""Image encoders for conditioning: CLIP vision features as Wan image-to-video reads them."""
