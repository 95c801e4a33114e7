"""Regenerate the example inputs (run once; the outputs are committed).

hello.wav / news.wav: `espeak-ng -s 150 -w hello.wav "..."` (see README). presenter.mp4 and portrait.jpg: the
public-domain NASA astronaut portrait (scikit-image's `astronaut.png`), as a 3 s clip with a slow drift and zoom.
"""

import sys
from pathlib import Path

import av
import cv2
import numpy as np

HERE = Path(__file__).parent


def main(source: Path) -> None:
    image = cv2.imread(str(source))  # 512 x 512, BGR
    cv2.imwrite(str(HERE / "portrait.jpg"), image[16:432, 48:464], [cv2.IMWRITE_JPEG_QUALITY, 92])
    with av.open(str(HERE / "presenter.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"crf": "24", "preset": "slow"})
        stream.width, stream.height, stream.pix_fmt = 384, 384, "yuv420p"
        for i in range(75):
            t = i / 75
            zoom = 1.0 + 0.04 * np.sin(np.pi * t)
            dx, dy = 6 * np.sin(2 * np.pi * t), 3 * np.sin(4 * np.pi * t)
            m = cv2.getRotationMatrix2D((256, 200), 1.5 * np.sin(2 * np.pi * t), zoom)
            m[:, 2] += (dx - 64, dy - 24)
            frame = cv2.warpAffine(image, m, (384, 384), borderMode=cv2.BORDER_REFLECT)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        container.mux(stream.encode())


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/fixtures/astronaut.png"))
