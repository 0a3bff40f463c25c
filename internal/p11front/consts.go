package p11front

// PKCS #11 v2.40 constants the front uses (names as in pkcs11t.h).

// Return values (CKR_*).
const (
	ckrOK                         = 0x000
	ckrHostMemory                 = 0x002
	ckrSlotIDInvalid              = 0x003
	ckrGeneralError               = 0x005
	ckrFunctionFailed             = 0x006
	ckrArgumentsBad               = 0x007
	ckrAttributeReadOnly          = 0x010
	ckrAttributeSensitive         = 0x011
	ckrAttributeTypeInvalid       = 0x012
	ckrAttributeValueInvalid      = 0x013
	ckrActionProhibited           = 0x01B
	ckrDataInvalid                = 0x020
	ckrDataLenRange               = 0x021
	ckrDeviceError                = 0x030
	ckrDeviceMemory               = 0x031
	ckrEncryptedDataInvalid       = 0x040
	ckrEncryptedDataLenRange      = 0x041
	ckrFunctionNotSupported       = 0x054
	ckrKeyHandleInvalid           = 0x060
	ckrKeySizeRange               = 0x062
	ckrKeyTypeInconsistent        = 0x063
	ckrKeyFunctionNotPermitted    = 0x068
	ckrKeyNotWrappable            = 0x069
	ckrKeyUnextractable           = 0x06A
	ckrMechanismInvalid           = 0x070
	ckrMechanismParamInvalid      = 0x071
	ckrObjectHandleInvalid        = 0x082
	ckrOperationActive            = 0x090
	ckrOperationNotInitialized    = 0x091
	ckrPinIncorrect               = 0x0A0
	ckrSessionCount               = 0x0B1
	ckrSessionHandleInvalid       = 0x0B3
	ckrSessionParallelNotSupp     = 0x0B4
	ckrSessionReadOnly            = 0x0B5
	ckrSignatureInvalid           = 0x0C0
	ckrSignatureLenRange          = 0x0C1
	ckrTemplateIncomplete         = 0x0D0
	ckrTemplateInconsistent       = 0x0D1
	ckrUserAlreadyLoggedIn        = 0x100
	ckrUserNotLoggedIn            = 0x101
	ckrUserTypeInvalid            = 0x103
	ckrWrappedKeyLenRange         = 0x112
	ckrRandomSeedNotSupported     = 0x120
	ckrBufferTooSmall             = 0x150
	ckrCryptokiNotInitialized     = 0x190
	ckrCryptokiAlreadyInitialized = 0x191
)

// Attribute types (CKA_*).
const (
	ckaClass            = 0x000
	ckaToken            = 0x001
	ckaPrivate          = 0x002
	ckaLabel            = 0x003
	ckaValue            = 0x011
	ckaKeyType          = 0x100
	ckaSubject          = 0x101
	ckaID               = 0x102
	ckaSensitive        = 0x103
	ckaEncrypt          = 0x104
	ckaDecrypt          = 0x105
	ckaWrap             = 0x106
	ckaUnwrap           = 0x107
	ckaSign             = 0x108
	ckaSignRecover      = 0x109
	ckaVerify           = 0x10A
	ckaVerifyRecover    = 0x10B
	ckaDerive           = 0x10C
	ckaStartDate        = 0x110
	ckaEndDate          = 0x111
	ckaModulus          = 0x120
	ckaModulusBits      = 0x121
	ckaPublicExponent   = 0x122
	ckaPrivateExponent  = 0x123
	ckaPrime1           = 0x124
	ckaPrime2           = 0x125
	ckaPublicKeyInfo    = 0x129
	ckaValueLen         = 0x161
	ckaExtractable      = 0x162
	ckaLocal            = 0x163
	ckaNeverExtractable = 0x164
	ckaAlwaysSensitive  = 0x165
	ckaKeyGenMechanism  = 0x166
	ckaModifiable       = 0x170
	ckaCopyable         = 0x171
	ckaDestroyable      = 0x172
	ckaECParams         = 0x180
	ckaECPoint          = 0x181
	ckaAlwaysAuth       = 0x202
	ckaWrapWithTrusted  = 0x210
)

// Object classes (CKO_*).
const (
	ckoData       = 0
	ckoPublicKey  = 2
	ckoPrivateKey = 3
	ckoSecretKey  = 4
)

// Key types (CKK_*).
const (
	ckkRSA           = 0x00
	ckkEC            = 0x03
	ckkGenericSecret = 0x10
	ckkAES           = 0x1F
	ckkSHA256HMAC    = 0x2B
	ckkSHA384HMAC    = 0x2C
	ckkSHA512HMAC    = 0x2D
	ckkECEdwards     = 0x40
	ckkECMontgomery  = 0x41
)

// Mechanisms (CKM_*).
const (
	ckmRSAPKCSKeyPairGen = 0x0000
	ckmRSAPKCS           = 0x0001
	ckmRSAPKCSOAEP       = 0x0009
	ckmRSAPKCSPSS        = 0x000D
	ckmSHA256RSAPKCS     = 0x0040
	ckmSHA384RSAPKCS     = 0x0041
	ckmSHA512RSAPKCS     = 0x0042
	ckmSHA256RSAPKCSPSS  = 0x0043
	ckmSHA384RSAPKCSPSS  = 0x0044
	ckmSHA512RSAPKCSPSS  = 0x0045
	ckmSHA256            = 0x0250
	ckmSHA256HMAC        = 0x0251
	ckmSHA384            = 0x0260
	ckmSHA384HMAC        = 0x0261
	ckmSHA512            = 0x0270
	ckmSHA512HMAC        = 0x0271
	ckmSHA3256           = 0x02B0
	ckmSHA3512           = 0x02D0
	ckmGenericSecretGen  = 0x0350
	ckmECKeyPairGen      = 0x1040
	ckmECDSA             = 0x1041
	ckmECDSASHA256       = 0x1044
	ckmECDSASHA384       = 0x1045
	ckmECDSASHA512       = 0x1046
	ckmECEdwardsGen      = 0x1055
	ckmECMontgomeryGen   = 0x1056
	ckmEDDSA             = 0x1057
	ckmAESKeyGen         = 0x1080
	ckmAESGCM            = 0x1087
)

// MGF1 functions (CKG_*).
const (
	ckgMGF1SHA256 = 2
	ckgMGF1SHA384 = 3
	ckgMGF1SHA512 = 4
)

// Flags.
const (
	// CK_TOKEN_INFO
	ckfRNG                  = 0x001
	ckfLoginRequired        = 0x004
	ckfUserPinInitialized   = 0x008
	ckfProtectedAuthPath    = 0x100
	ckfTokenInitialized     = 0x400
	ckfTokenPresent         = 0x001 // CK_SLOT_INFO
	ckfRWSession            = 0x002 // CK_SESSION_INFO
	ckfSerialSession        = 0x004
	ckfOSLockingOK          = 0x002
	ckfMechHW               = 0x00000001
	ckfMechEncrypt          = 0x00000100
	ckfMechDecrypt          = 0x00000200
	ckfMechDigest           = 0x00000400
	ckfMechSign             = 0x00000800
	ckfMechVerify           = 0x00002000
	ckfMechGenerate         = 0x00008000
	ckfMechGenerateKeyPair  = 0x00010000
	ckfMechECFp             = 0x00100000
	ckfMechECNamedCurve     = 0x00800000
	ckfMechECUncompress     = 0x01000000
	cksROPublic             = 0
	cksROUser               = 1
	cksRWPublic             = 2
	cksRWUser               = 3
	ckuSO                   = 0
	ckuUser                 = 1
	ckuContextSpecific      = 2
	ckUnavailableInfomation = ^uint64(0)
)
