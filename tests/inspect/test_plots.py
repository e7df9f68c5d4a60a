"""PNG figures of the inspection arrays (vitlab.inspect.plots)."""

import numpy as np
from PIL import Image

from vitlab.inspect.plots import plot_overlay, similarity_mosaic


def test_similarity_mosaic_places_each_small_map():
    sim = np.random.default_rng(0).random((3, 4, 3, 4))
    mosaic = similarity_mosaic(sim)
    assert mosaic.shape == (3 * 4 - 1, 4 * 5 - 1)
    np.testing.assert_array_equal(mosaic[4:7, 10:14], sim[1, 2])
    assert np.isnan(mosaic[3]).all() and np.isnan(mosaic[:, 4]).all()


def test_overlay_is_three_panels_written_atomically(tmp_path):
    """Image | the map | the overlay, side by side, as one PNG and nothing else in the folder."""
    image = np.zeros((32, 32, 3))
    heat = np.arange(4.0).reshape(2, 2)
    path = plot_overlay(image, heat, tmp_path / "o.png", "a title")
    w, h = Image.open(path).size
    assert w > 2 * h  # three panels in a row
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]  # no temporary file left
