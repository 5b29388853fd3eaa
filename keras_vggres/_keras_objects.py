"""Every Keras object of keras_vggres that a saved file may name, imported so it is registered.

Each class is decorated with `keras.saving.register_keras_serializable(package="keras_vggres")`
in its own module; `keras_vggres._register` imports this module once Keras is loaded.
"""

from keras_vggres.inference import InferenceModel  # noqa: F401
from keras_vggres.preprocessing import ImageNetPreprocessing  # noqa: F401
from keras_vggres.transfer.schedules import WarmupCosine  # noqa: F401
